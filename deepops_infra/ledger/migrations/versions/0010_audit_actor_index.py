"""audit log by user: an index on (actor, id), so `deepops audit --user NAME` reads a user's newest
entries from the index instead of walking the whole log back from the newest entry

Revision ID: 0010_audit_actor
Revises: 0009
Create Date: 2026-12-03 16:20:00.000000
"""
from alembic import op

revision = '0010_audit_actor'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_actor', ['actor', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_actor')
