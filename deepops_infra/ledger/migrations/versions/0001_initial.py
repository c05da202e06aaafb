"""initial ledger: machines, events, usage, gpu leases, host inventory

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 05:44:30.948179
"""
from alembic import op
import sqlalchemy as sa

from deepops_infra.ledger.schema import UTCDateTime


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('host_inventory',
    sa.Column('host', sa.String(length=128), nullable=False),
    sa.Column('detected_at', UTCDateTime(), nullable=False),
    sa.Column('gpus', sa.JSON(), nullable=False),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('host')
    )
    op.create_table('machines',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('cloud', sa.String(length=16), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('host', sa.String(length=128), nullable=True),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('team', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=64), nullable=False),
    sa.Column('image', sa.String(length=64), nullable=False),
    sa.Column('image_pin', sa.String(length=255), nullable=True),
    sa.Column('accelerator', sa.String(length=32), nullable=True),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('provider_refs', sa.JSON(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('validation', sa.JSON(), nullable=True),
    sa.Column('price_per_hour', sa.Numeric(precision=14, scale=6), nullable=False),
    sa.Column('price_breakdown', sa.JSON(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('ready_at', UTCDateTime(), nullable=True),
    sa.Column('expires_at', UTCDateTime(), nullable=False),
    sa.Column('ended_at', UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.create_index('ix_machines_live', ['ended_at', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_machines_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_machines_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_machines_team'), ['team'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=False),
    sa.Column('at', UTCDateTime(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_machine_id'), ['machine_id'], unique=False)

    op.create_table('gpu_leases',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=False),
    sa.Column('host', sa.String(length=128), nullable=False),
    sa.Column('gpu_index', sa.Integer(), nullable=False),
    sa.Column('leased_at', UTCDateTime(), nullable=False),
    sa.Column('released_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gpu_leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gpu_leases_machine_id'), ['machine_id'], unique=False)
        batch_op.create_index('uq_gpu_leases_active', ['host', 'gpu_index'], unique=True, sqlite_where=sa.text('released_at IS NULL'), postgresql_where=sa.text('released_at IS NULL'))

    op.create_table('usage_intervals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=False),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('ended_at', UTCDateTime(), nullable=True),
    sa.Column('price_per_hour', sa.Numeric(precision=14, scale=6), nullable=False),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['machine_id'], ['machines.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('usage_intervals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_intervals_machine_id'), ['machine_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('usage_intervals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_intervals_machine_id'))

    op.drop_table('usage_intervals')
    with op.batch_alter_table('gpu_leases', schema=None) as batch_op:
        batch_op.drop_index('uq_gpu_leases_active', sqlite_where=sa.text('released_at IS NULL'), postgresql_where=sa.text('released_at IS NULL'))
        batch_op.drop_index(batch_op.f('ix_gpu_leases_machine_id'))

    op.drop_table('gpu_leases')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_machine_id'))

    op.drop_table('events')
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_machines_team'))
        batch_op.drop_index(batch_op.f('ix_machines_status'))
        batch_op.drop_index(batch_op.f('ix_machines_owner'))
        batch_op.drop_index('ix_machines_live')

    op.drop_table('machines')
    op.drop_table('host_inventory')
