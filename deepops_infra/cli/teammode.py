"""Commands that act on this computer's own state only: with DEEPOPS_SERVER set (team mode)
each refuses in one line with exit 2, saying where the work is done instead. Never a silent
local fallback: a team member must not reap, validate or reconcile a laptop's empty ledger
believing they acted on the team's."""

import os
from typing import Any

# command path (as typed after `deepops`) -> why it cannot go through the team server
LOCAL_ONLY: dict[str, str] = {
    "reap": "the team server runs the reaper itself (`deepops serve --reaper`)",
    "validate": "validation runs on the server while a machine comes up; see `deepops show ID`",
    "doctor": "it checks this computer's ledger, pool and cloud access; the server's admins run it there",
    "catalog refresh": "the catalog is the server's; its admins refresh it there",
    "catalog check": "the catalog is the server's; its admins check it there",
    "images verify": "image pins are verified with the server's cloud access; its admins run it there",
    "cost reconcile": "reconciling needs the server's ledger and cloud billing access; its admins run it there",
}


def team_mode() -> bool:
    """DEEPOPS_SERVER is set (checked without importing the HTTP client: local mode stays fast)."""
    return bool(os.environ.get("DEEPOPS_SERVER", "").strip())


def team_client() -> Any:
    """The server's operations (client.Remote) in team mode, else None (local mode)."""
    if not team_mode():
        return None
    from deepops_infra.client import Remote

    return Remote.from_env()


def refuse_local_only(command: Any, path: str = "") -> Any:
    """Wrap the callbacks of LOCAL_ONLY commands (a click command or group, as typer builds it)."""
    for name, sub in getattr(command, "commands", {}).items():
        refuse_local_only(sub, f"{path} {name}".strip())
    why = LOCAL_ONLY.get(path)
    if why is not None and command.callback is not None:
        command.callback = _refusing(command.callback, path, why)
    return command


def _refusing(callback: Any, path: str, why: str) -> Any:
    import functools

    @functools.wraps(callback)
    def check(*args: Any, **kwargs: Any) -> Any:
        from deepops_infra.errors import UserError

        if team_mode():
            raise UserError(f"`deepops {path}` does not work with DEEPOPS_SERVER set: {why} (unset it to run locally)")
        return callback(*args, **kwargs)

    return check
