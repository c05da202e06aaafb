"""ssh keys: the public keys users register with the team server for `deepops ssh` sessions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 16:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

from deepops_infra.ledger.schema import UTCDateTime


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ssh_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_name', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('last_used_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ssh_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ssh_keys_user_name'), ['user_name'], unique=False)
        batch_op.create_index('ux_ssh_keys_user_fingerprint', ['user_name', 'fingerprint'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('ssh_keys', schema=None) as batch_op:
        batch_op.drop_index('ux_ssh_keys_user_fingerprint')
        batch_op.drop_index(batch_op.f('ix_ssh_keys_user_name'))
    op.drop_table('ssh_keys')
