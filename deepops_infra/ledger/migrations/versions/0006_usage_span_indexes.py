"""indexes that find the machines touching a cost report's period: by the start of their usage,
by its length, and those without closed totals

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 12:00:00.000000

A report over a month of a ledger holding years reads the machines whose usage touches the month
(costs/query._touching) instead of every machine and every interval.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_machines_usage', 'machines', ['usage_from_us', 'usage_to_us'], unique=False)
    op.create_index(
        'ix_machines_usage_length',
        'machines',
        [sa.text('(usage_to_us - usage_from_us)'), 'usage_from_us', 'usage_to_us'],
        unique=False,
    )
    op.create_index(
        'ix_machines_unclosed',
        'machines',
        ['usage_from_us'],
        unique=False,
        sqlite_where=sa.text('usage_to_us IS NULL'),
        postgresql_where=sa.text('usage_to_us IS NULL'),
    )
    if op.get_bind().dialect.name == 'postgresql':
        # Statistics on the new length expression, which the planner otherwise lacks until the
        # next automatic ANALYZE of the table.
        op.execute('ANALYZE machines')


def downgrade() -> None:
    op.drop_index('ix_machines_unclosed', table_name='machines')
    op.drop_index('ix_machines_usage_length', table_name='machines')
    op.drop_index('ix_machines_usage', table_name='machines')
