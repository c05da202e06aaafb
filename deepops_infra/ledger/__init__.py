"""The usage ledger: machines, events, usage intervals and on-prem GPU leases."""

# The Alembic revision the code expects; checked cheaply on every open (see db.migrate).
HEAD_REVISION = "0011_usage_totals"
