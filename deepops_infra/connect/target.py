"""Which machine a session goes to, and how it is reached, in local mode.

Kept light (no SQLAlchemy, no provider module, when the ledger's quick read path serves): this
runs on every `deepops ssh` and in every ProxyCommand, where a second spent importing is a second
the user waits for a shell.
"""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import NotFoundError, UserError

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.providers.base import SessionCommand


@dataclass(frozen=True)
class Endpoint:
    """What an ssh client needs to know of a machine before it connects."""

    id: str
    name: str | None
    user: str  # the Unix user the machine's sshd runs as

    @property
    def alias(self) -> str:
        from deepops_infra.connect.keys import alias

        return alias(self.id)


def find_machine(settings: "Settings", ref: str) -> Any:
    """The machine `ref` (ID or name) names in the local ledger; NotFoundError when none does.
    A ledger that does not exist yet is not created."""
    from datetime import UTC, datetime

    from deepops_infra.ledger import quickread

    url = settings.ledger_url
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        raise quickread.no_machine(ref)
    opened = quickread.connect(url)
    if opened is None:  # a ledger to migrate, or a driver the quick path does not speak
        from deepops_infra.service.machines import get_machine

        return get_machine(ref, settings=settings)
    conn, mark = opened
    try:
        return quickread.find_machine(conn, mark, ref, datetime.now(UTC))[0]
    finally:
        conn.close()


def live(machine: Any) -> Any:
    if machine.ended_at is not None:
        raise UserError(f"{machine.id} is {machine.status}; only a running machine takes sessions")
    return machine


def session_command(settings: "Settings", machine: Any, public_key: str) -> "SessionCommand":
    """The provider's session_command; on-prem straight from the pool file (the provider module
    and its imports are not needed for it)."""
    if machine.cloud == "onprem":
        from deepops_infra.pool import load_pool
        from deepops_infra.providers.onprem import session

        try:
            host = load_pool(settings.pool_path).get(machine.host or "")
        except NotFoundError:
            raise UserError(f"{machine.id}: host {machine.host} is no longer in the pool") from None
        return session.session_command(settings, host, machine, public_key)
    from deepops_infra.cli.common import open_ledger
    from deepops_infra.providers import get_provider

    return get_provider(machine.cloud, settings, open_ledger(settings, create=False)).session_command(
        machine, public_key
    )


def endpoint(settings: "Settings", machine: Any, public_key: str) -> Endpoint:
    """The machine as an ssh client sees it (its Unix user, from the same session command)."""
    command = session_command(settings, live(machine), public_key)
    return Endpoint(id=machine.id, name=machine.name, user=command.user)
