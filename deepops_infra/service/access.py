"""Who asks the service: the local user (every machine of their own ledger) or a team server
caller (a member sees their own machines, a team-admin the team's, an it-admin every one)."""

import os
from dataclasses import dataclass
from typing import Protocol

from deepops_infra.errors import PolicyError

LISTERS = ("member", "team-admin", "it-admin")  # the roles that may list, request and release machines


class Actor(Protocol):
    """What the service needs to know about a caller (server/identity.Caller is one)."""

    @property
    def name(self) -> str: ...

    @property
    def team(self) -> str: ...

    @property
    def role(self) -> str: ...

    def can_see(self, owner: str, team: str) -> bool: ...


class ForbiddenError(PolicyError):
    """The caller's role may not do this (403 on the API, exit 2 on the CLI)."""


@dataclass(frozen=True)
class LocalUser:
    """The person at the terminal in local mode: their ledger, all of it, is theirs."""

    name: str
    team: str = ""
    role: str = "local"

    def can_see(self, owner: str, team: str) -> bool:
        return True


LOCAL = LocalUser(name=os.environ.get("USER") or "user")


def is_local(actor: Actor) -> bool:
    return actor.role == "local"


def need(actor: Actor, *roles: str) -> None:
    """Refuse a server caller whose role is not one of `roles` (the local user may do anything)."""
    if not is_local(actor) and actor.role not in roles:
        raise ForbiddenError(f"role {actor.role} may not do this (needs {' or '.join(roles)})")


def scope(actor: Actor) -> dict[str, str]:
    """Which machines a caller sees, as column filters: a member their own, a team-admin the team's."""
    if actor.role == "member":
        return {"owner": actor.name}
    return {"team": actor.team} if actor.role == "team-admin" else {}
