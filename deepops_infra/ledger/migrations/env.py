"""Alembic environment: runs on the connection the ledger hands over (see db.migrate)."""

from alembic import context

from deepops_infra.ledger.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite"
)
with context.begin_transaction():
    context.run_migrations()
