"""reaper actions on resources without a machine row (orphans)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 09:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

from deepops_infra.ledger.schema import UTCDateTime


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reaper_actions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.Column('cloud', sa.String(length=16), nullable=False),
    sa.Column('resource_id', sa.String(length=255), nullable=False),
    sa.Column('location', sa.String(length=128), nullable=True),
    sa.Column('machine_tag', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reaper_actions', schema=None) as batch_op:
        batch_op.create_index('ix_reaper_actions_at', ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reaper_actions_machine_tag'), ['machine_tag'], unique=False)
        batch_op.create_index(batch_op.f('ix_reaper_actions_resource_id'), ['resource_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reaper_actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reaper_actions_resource_id'))
        batch_op.drop_index(batch_op.f('ix_reaper_actions_machine_tag'))
        batch_op.drop_index('ix_reaper_actions_at')
    op.drop_table('reaper_actions')
