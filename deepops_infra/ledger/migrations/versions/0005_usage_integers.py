"""usage intervals as integers (microseconds, micro-dollars), a covering index for cost reports,
and each ended machine's closed totals

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 08:40:00.000000

Existing rows are filled in SQL with the arithmetic of pricing.py, written out here so that this
migration keeps meaning what it meant when later code changes.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _epoch_us(dialect: str, column: str) -> str:
    if dialect == "sqlite":  # 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC
        return (
            f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
            f" + CAST(substr({column} || '000000', 21, 6) AS INTEGER))"  # '.25' is 250000 us
        )
    return f"CAST(round(date_part('epoch', {column}) * 1000000) AS BIGINT)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table('usage_intervals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('started_us', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('ended_us', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('price_micro', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('cost_micro', sa.BigInteger(), nullable=True))
    price = "CAST(round(price_per_hour * 1000000) AS BIGINT)"
    op.execute(
        f"UPDATE usage_intervals SET started_us = {_epoch_us(dialect, 'started_at')},"
        f" ended_us = CASE WHEN ended_at IS NULL THEN NULL ELSE {_epoch_us(dialect, 'ended_at')} END,"
        f" price_micro = {price}"
    )
    # Half-up to the micro-dollar (pricing.cost_micro), split so that no product passes 64 bits.
    p, d = "price_micro", "(CASE WHEN ended_us > started_us THEN ended_us - started_us ELSE 0 END)"
    whole, frac = f"({d} / 1000000)", f"({d} % 1000000)"
    op.execute(
        f"UPDATE usage_intervals SET cost_micro = ({p} * {whole}) / 3600"
        f" + ((({p} * {whole}) % 3600 * 1000000 + {p} * {frac}) * 2 + 3600000000) / 7200000000"
        " WHERE ended_us IS NOT NULL"
    )
    with op.batch_alter_table('usage_intervals', schema=None) as batch_op:
        batch_op.alter_column('started_us', existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column('price_micro', existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_index('ix_usage_intervals_machine_id')
        batch_op.create_index(
            'ix_usage_intervals_machine_cost',
            ['machine_id', 'started_us', 'ended_us', 'price_micro', 'gpu_count', 'cost_micro'],
            unique=False,
        )
    with op.batch_alter_table('machines', schema=None) as batch_op:
        for column in _MACHINE_TOTALS:
            batch_op.add_column(sa.Column(column, sa.BigInteger(), nullable=True))
    # Reports stay right without the totals (a machine without them is added up from its intervals
    # and samples); closing them for machines that ended before this revision makes reports fast.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM machines WHERE ended_at IS NOT NULL LIMIT 1")).first():
        from sqlalchemy.orm import Session

        from deepops_infra.costs.query import finalize

        finalize(Session(bind=bind), bind.dialect.name, None)


_MACHINE_TOTALS = (
    'usage_from_us', 'usage_to_us', 'total_cost_micro', 'total_gpu_us', 'total_idle_micro', 'total_idle_gpu_us'
)


def downgrade() -> None:
    with op.batch_alter_table('usage_intervals', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_intervals_machine_cost')
        batch_op.create_index('ix_usage_intervals_machine_id', ['machine_id'], unique=False)
        batch_op.drop_column('cost_micro')
        batch_op.drop_column('price_micro')
        batch_op.drop_column('ended_us')
        batch_op.drop_column('started_us')
    with op.batch_alter_table('machines', schema=None) as batch_op:
        for column in reversed(_MACHINE_TOTALS):
            batch_op.drop_column(column)
