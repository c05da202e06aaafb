"""The machines service: one way through for the CLI (in-process, local mode), the team server's
routes and its workers. Each module is one concern with typed inputs and outputs:

- machines: plan, record, launch, release, extend, list, show (and get_machine for lookups)
- offers: a launch's fallback offers, kept in the ledger
- pool: the on-prem pool's hosts (ls, add, rm)
- budgets: spend against the monthly budgets
- access: who asks (the local user, or a server caller) and what they may see

Nothing heavy is imported here: modules load what they need inside their functions.
"""
