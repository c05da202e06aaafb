"""utilization samples, notifications, installation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:15:18.365989
"""
from alembic import op
import sqlalchemy as sa

from deepops_infra.ledger.schema import UTCDateTime


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('installation',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=True),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('delivered', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notifications_machine_id'), ['machine_id'], unique=False)

    op.create_table('utilization_samples',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=False),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('gpu_util_percent', sa.Float(), nullable=True),
    sa.Column('gpu_mem_percent', sa.Float(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=True),
    sa.Column('signals', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('utilization_samples', schema=None) as batch_op:
        batch_op.create_index('ix_utilization_samples_machine_at', ['machine_id', 'at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('utilization_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_utilization_samples_machine_at')

    op.drop_table('utilization_samples')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_machine_id'))

    op.drop_table('notifications')
    op.drop_table('installation')
