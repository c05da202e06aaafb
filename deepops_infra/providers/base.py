"""The one interface every target implements; lifecycle, reaper, costs and CLI use only this.

A provider plans (which offers fit a request, at what frozen price), reserves inside the ledger
transaction that records the machine, creates resources, configures and validates them,
destroys them (returning only once they are confirmed gone), discovers what exists, and reads
utilization. Anything above this file never imports a cloud SDK or Ansible.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from deepops_infra.pricing import Price, decimal_text
from deepops_infra.progress import Progress

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.images import Image
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.request import MachineRequest


@dataclass(frozen=True)
class Plan:
    """A concrete offer for a request: where, what, and its frozen price."""

    cloud: str
    region: str | None
    host: str | None
    instance_type: str | None
    accelerator: str | None
    accelerator_count: int
    image_pin: str | None
    price: Price
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "host": self.host,
            "instance_type": self.instance_type,
            "accelerator": self.accelerator,
            "accelerator_count": self.accelerator_count,
            "image_id": self.image_pin,
            "price_per_hour": decimal_text(self.price.per_hour),
            "price": self.price.to_json(),
            **self.details,
        }


@dataclass(frozen=True)
class Resource:
    """Something a provider found that this installation manages (discover)."""

    cloud: str
    machine_id: str | None
    resource_id: str
    state: str
    tags: dict[str, str] = field(default_factory=dict)
    location: str | None = None


@dataclass(frozen=True)
class Utilization:
    at: datetime
    gpu_percent: list[float]
    gpu_memory_percent: list[float]
    active: bool | None = None  # None: could not be read (counts as active)
    # When the machine was last in use by any signal, where the source knows (the agent does).
    last_active_at: datetime | None = None
    source: str = "provider"
    signals: dict[str, Any] | None = None
    ended_by_agent: str | None = None  # the dead-man switch's reason, when it ended the machine
    error: str | None = None  # reading failed (active is None); the reaper reports it as a cycle error

    @classmethod
    def unknown(cls, at: datetime, error: str | None = None, source: str = "provider") -> "Utilization":
        """Nothing could be read: counts as active."""
        return cls(at=at, gpu_percent=[], gpu_memory_percent=[], active=None, source=source, error=error)


@dataclass(frozen=True)
class SessionCommand:
    """How to reach a machine's session end (connect/lease.py): `argv`, run where the pool key or
    cloud key is held, whose stdin/stdout carry a header line and then the machine's `sshd -i`;
    `user`, the Unix user that sshd runs as (the one name the user's ssh client may log in as)."""

    argv: list[str]
    user: str


class ProvisionError(Exception):
    """Creating resources failed. `created` says whether anything may exist that needs teardown."""

    def __init__(self, message: str, created: bool, retryable: bool = False) -> None:
        super().__init__(message)
        self.created = created
        self.retryable = retryable  # no capacity or quota for this offer: the next offer may work


class ResourceBusy(Exception):
    """terminate_resource() cannot remove the resource yet (something still uses it): the reaper
    leaves it, without an error, for a later cycle."""


class Provider(ABC):
    cloud: str

    @abstractmethod
    def plan(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        """Offers that fit, cheapest first; a UserError when none ever could (nothing written)."""

    def reserve(self, session: "Session", machine: "Machine", plans: list[Plan]) -> Plan:
        """Claim capacity inside the transaction that records the machine; returns the plan used."""
        return plans[0]

    def release_reservation(self, session: "Session", machine: "Machine", at: datetime) -> None:
        """Give back what reserve() claimed, in the transaction that ends the machine."""
        return None

    @abstractmethod
    def create(self, machine: "Machine", progress: Progress) -> dict[str, Any]:
        """Make the resources exist; returns provider references stored with the machine."""

    @abstractmethod
    def configure(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        """Install the image's pinned software; returns the manifest of what was found there."""

    @abstractmethod
    def validate(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        """Check the machine delivers what was ordered; `{"passed": bool, "checks": [...]}`."""

    @abstractmethod
    def destroy(self, machine: "Machine", progress: Progress) -> None:
        """Remove the resources; return only once they are confirmed gone, else raise."""

    @abstractmethod
    def discover(self) -> list[Resource]:
        """Everything of this installation that exists on this target right now."""

    @abstractmethod
    def utilization(self, machine: "Machine") -> Utilization | None:
        """Latest utilization sample, or None when there is none."""

    def utilization_many(self, machines: "list[Machine]") -> "dict[str, Utilization | None]":
        """Utilization of many machines by ID, for one reaper cycle. A provider whose API reads
        many at once overrides this; by default one utilization() each, and a reading that raises
        becomes an unknown one (counts as active) carrying the error."""
        readings: dict[str, Utilization | None] = {}
        for machine in machines:
            try:
                readings[machine.id] = self.utilization(machine)
            except Exception as exc:  # unreadable counts as active
                readings[machine.id] = Utilization.unknown(datetime.now(UTC), f"{type(exc).__name__}: {exc}")
        return readings

    @abstractmethod
    def shell_command(self, machine: "Machine", command: list[str] | None) -> list[str]:
        """argv that opens a shell in the machine (or runs `command` there)."""

    def session_command(self, machine: "Machine", public_key: str) -> SessionCommand:
        """The byte stream to the machine's own `sshd -i` that lets `public_key` in for one session
        (`deepops ssh`, ssh-config hosts, the server's brokered sessions)."""
        from deepops_infra.errors import UserError

        raise UserError(f"{machine.id}: `deepops ssh` sessions into {self.cloud} machines are not available yet")

    def doctor(self) -> list[tuple[str, bool, str]]:
        """(check, ok, detail) rows for `deepops doctor`."""
        return []

    def preflight(self, plans: list[Plan]) -> None:
        """Raise UserError when the plans cannot be acted on from here (missing CLI or credentials),
        before anything is written."""
        return None

    def image_pin(self, image: "Image", region: str | None) -> str | None:
        """The image's immutable pin on this target in `region` today; None when it has none there.
        The provider is the one authority on its pins (`up --like` checks an earlier machine's
        pin against this); plans carry the same value."""
        return None

    def extend_to(self, machine: "Machine", expires_at: datetime) -> None:
        """Move the target's own cap (a scheduler's time limit) to `expires_at`; a UserError with the
        target's reason refuses the extension. Default: the target has no cap of its own."""
        return None

    # -- reaper hooks (defaults are the safe answer) ------------------------------------------

    def confirm_gone(self, machine: "Machine") -> datetime | None:
        """When the machine's resources were confirmed gone (a ghost), or None when unknown."""
        return None

    def checkin(self, machine: "Machine", control: dict[str, Any]) -> None:
        """Tell the machine's agent the control plane is alive (and its current expiry)."""
        return None

    def discover_leftovers(self, found: list[Resource]) -> list[Resource]:
        """What machines leave besides the resources discover() lists (on AWS an instance's security
        group, key pair, IAM role and instance profile), of machines with nothing in `found` (this
        cycle's discover()): the reaper removes them with terminate_resource() once no live ledger
        row holds their machine. Read before the ledger, as discover() is. Default: none."""
        return []

    def terminate_resource(self, resource: Resource) -> str | None:
        """Break-glass: remove a tagged resource that has no live ledger row (an orphan). Returns a
        note on what else was removed or left (None: nothing to add); raises ResourceBusy when the
        resource cannot be removed yet."""
        raise NotImplementedError(f"{self.cloud}: removing orphans is not supported")

    def prune_quarantine(self, older_than: timedelta) -> list[Resource]:
        """Remove what terminate_resource() moved aside instead of deleting (on-prem: orphan
        workspaces in quarantine) once older than `older_than`; what was removed. Default: none."""
        return []
