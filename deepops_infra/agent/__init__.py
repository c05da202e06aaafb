"""The on-machine agent (deepops_agent.py, stdlib only, copied onto machines by roles/agent) and
the control plane's side of it: its settings and reading its status (settings.py, status.py)."""
