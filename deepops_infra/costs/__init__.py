"""Costs from the ledger: reports, budgets, reconciliation with the cloud bills (see README "Cost reports")."""
