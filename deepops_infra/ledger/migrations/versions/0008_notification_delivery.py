"""notification delivery: when it was delivered, how often it was tried, and a claim on the
attempt in flight, so that a message not delivered (no webhook, or the webhook failed) is tried
again on later runs, by one process at a time

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-22 12:00:00.000000

Messages already delivered count as delivered when they were recorded, after one attempt.
"""
from alembic import op
import sqlalchemy as sa

from deepops_infra.ledger.schema import UTCDateTime


revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite too): no table copy, and the ledger stays readable by older code.
    op.add_column('notifications', sa.Column('delivered_at', UTCDateTime(), nullable=True))
    op.add_column('notifications', sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
    op.add_column('notifications', sa.Column('sending_since', UTCDateTime(), nullable=True))
    notifications = sa.table(
        'notifications',
        sa.column('at', UTCDateTime()),
        sa.column('delivered', sa.Boolean()),
        sa.column('delivered_at', UTCDateTime()),
        sa.column('attempts', sa.Integer()),
    )
    op.execute(
        notifications.update()
        .where(notifications.c.delivered == sa.true())
        .values(delivered_at=notifications.c.at, attempts=1)
    )


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('sending_since')
        batch_op.drop_column('attempts')
        batch_op.drop_column('delivered_at')
