"""Machines: plan, record, launch, release, extend, list, show. The CLI calls these in-process
(local mode, as the LOCAL user), the team server's routes and workers call the very same ones
for a server caller, whose role decides what they may see and ask for.

    request --plan()--> Planned --record()--> machine row (+ its fallback offers) --launch()--> ready
"""

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import NotFoundError
from deepops_infra.intake import Options
from deepops_infra.service.access import LISTERS, LOCAL, Actor, ForbiddenError, is_local, need, scope

if TYPE_CHECKING:
    from collections.abc import Callable

    from deepops_infra.config import Settings
    from deepops_infra.images import Image
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.progress import Progress
    from deepops_infra.providers.base import Plan, Provider
    from deepops_infra.request import MachineRequest
    from deepops_infra.views import MachineView


@dataclass
class MachineOrder(Options):
    """A machine as asked for (CLI options or the API's body): intake's Options, and an earlier
    machine to copy from; None means "not given". plan() validates it: nothing is written before."""

    like: str | None = None  # an earlier machine (ID, or name: the latest) to copy pin, GPUs and target from

    def options(self) -> Options:
        return Options(**{f.name: getattr(self, f.name) for f in fields(Options)})


@dataclass
class Planned:
    """A validated request and its offers, best first; nothing written yet."""

    request: "MachineRequest"
    image: "Image"
    plans: "list[Plan]"
    provider: "Provider"

    def summary(self) -> dict[str, Any]:
        """The plan as `up --dry-run --json` and the API show it."""
        best, hours = self.plans[0], self.request.ttl.total_seconds() / 3600
        estimate = (best.price.per_hour * Decimal(str(hours))).quantize(Decimal("0.01"))
        return best.to_json() | {
            "spot": self.request.spot,
            "ttl_seconds": int(self.request.ttl.total_seconds()),
            "estimated_cost": str(estimate),
            "alternatives": [p.to_json() for p in self.plans[1:6]],
        }


@dataclass(frozen=True)
class Target:
    """A machine about to be released: what the confirmation names."""

    id: str
    status: str


@dataclass(frozen=True)
class Released:
    """A release's outcome: the machine as listed (JSON) and its cost line."""

    machine: dict[str, Any]
    cost_line: str

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "cost_line": self.cost_line}


class Machines:
    """The machines service over one ledger. `progress` reports launch and release steps (the
    CLI's spinner; quiet in the server and its workers)."""

    def __init__(
        self, settings: "Settings", ledger: "Ledger | None" = None, progress: "Progress | None" = None
    ) -> None:
        self.settings = settings
        self._ledger = ledger
        self._progress = progress
        self._providers: dict[str, Provider] = {}

    @property
    def ledger(self) -> "Ledger":
        """The ledger; a missing SQLite one reads as empty and is made by the first write."""
        if self._ledger is None:
            from deepops_infra.ledger.db import Ledger

            self._ledger = Ledger(self.settings.ledger_url, create=False)
        return self._ledger

    @property
    def progress(self) -> "Progress":
        if self._progress is None:
            from deepops_infra.progress import make_progress

            self._progress = make_progress(enabled=False)
        return self._progress

    def provider_for(self, cloud: str) -> "Provider":
        """The provider of a target (onprem, aws, ...), one per service."""
        if cloud not in self._providers:
            from deepops_infra.providers import get_provider

            self._providers[cloud] = get_provider(cloud, self.settings, self.ledger)
        return self._providers[cloud]

    def lifecycle(self, cloud: str) -> Any:
        from deepops_infra.lifecycle import Lifecycle

        return Lifecycle(self.settings, self.ledger, self.provider_for(cloud), self.progress)

    # -- request -------------------------------------------------------------------------------

    def plan(self, order: MachineOrder, actor: Actor = LOCAL) -> Planned:
        """Validate and plan (policy, images, placement); reads only."""
        from deepops_infra.intake import build_request, find_like

        order = self._on_behalf(order, actor)
        like = None
        if order.like:
            ref = order.like
            with self.ledger.read() as session:
                like = visible(actor, ref, lambda: find_like(session, ref, scope(actor) or None))
        request, image = build_request(self.settings, order.options(), like)
        provider = self.provider_for(request.cloud)
        return Planned(request, image, provider.plan(request, image), provider)

    def admit(self, planned: Planned) -> None:
        """Refuse as the real request would be (policy limits, budgets): for dry runs."""
        from deepops_infra.intake import check_admission

        check_admission(self.settings, self.ledger, planned.request)

    def record(self, planned: Planned) -> "Machine":
        """Write the machine, its reservation and its fallback offers (intent before resources)."""
        self.settings.ensure_home()
        lifecycle = self.lifecycle(planned.request.cloud)
        return lifecycle.record(planned.request, planned.image, planned.plans)  # type: ignore[no-any-return]

    def launch(self, machine: "Machine | str", keep_on_failure: bool = False) -> "Machine":
        """Take a recorded machine to ready (raises, with the machine failed and torn down, when
        it cannot be); on a capacity error the offers kept in the ledger are tried."""
        from deepops_infra.images import get_image

        if isinstance(machine, str):
            machine = self.get_machine(machine)
        lifecycle = self.lifecycle(machine.cloud)
        return lifecycle.launch(machine, get_image(machine.image), keep_on_failure=keep_on_failure)  # type: ignore[no-any-return]

    def _on_behalf(self, order: MachineOrder, actor: Actor) -> MachineOrder:
        """A server caller asks for themselves (a team-admin also for their team's people, an
        it-admin for anyone); owner and team default to the caller's."""
        if is_local(actor):
            return order
        need(actor, *LISTERS)
        owner, team = order.owner or actor.name, order.team or actor.team
        if owner != actor.name and actor.role == "member":
            raise ForbiddenError("a member requests machines for themselves only (drop owner)")
        if owner != actor.name and actor.role == "team-admin":
            from deepops_infra.ledger.schema import ApiUser

            with self.ledger.read() as session:
                person = session.get(ApiUser, owner)
            if person is None or person.team != actor.team:
                raise ForbiddenError(f"a team-admin requests machines for people of team {actor.team} only")
        if team != actor.team and actor.role != "it-admin":
            raise ForbiddenError(f"you request for team {actor.team} only")
        return replace(order, owner=owner, team=team)

    # -- read ----------------------------------------------------------------------------------

    def get_machine(self, ref: str, actor: Actor = LOCAL) -> "Machine":
        """One machine by ID or name, when `actor` may see it (else NotFoundError: another's
        machine is not even named)."""
        from deepops_infra.ledger import store

        with self.ledger.read() as session:
            return visible(actor, ref, lambda: store.find_machine(session, ref, within=scope(actor) or None))  # type: ignore[no-any-return]

    def show(self, ref: str, actor: Actor = LOCAL) -> "MachineView":
        """Everything about one machine: request, plan, price, manifest, checks and events."""
        from deepops_infra.ledger import store
        from deepops_infra.views import MachineView

        with self.ledger.read() as session:
            m = visible(actor, ref, lambda: store.find_machine(session, ref, within=scope(actor) or None))
            spent = store.costs(session, [m.id])[m.id]
            return MachineView.of(m, spent, store.events(session, m.id))

    def list_machines(
        self,
        actor: Actor = LOCAL,
        *,
        include_ended: bool = False,
        owner: str | None = None,
        at: datetime | None = None,
    ) -> "list[MachineView]":
        """Machines `actor` sees (running ones unless `include_ended`), oldest first, with their
        cost so far; `owner` narrows to one person's."""
        from deepops_infra.views import MachineView

        need(actor, *LISTERS)
        at = at or datetime.now(UTC)
        where = scope(actor)
        if owner and where.setdefault("owner", owner) != owner:
            return []  # a member asking for someone else's machines sees none
        rows = self._quick_list(at, include_ended, where)
        if rows is None:  # a schema to migrate, or a driver the quick path does not speak
            rows = self._orm_list(at, include_ended, where)
        return [MachineView.of(m, spent) for m, spent in rows]

    def _quick_list(self, at: datetime, include_ended: bool, where: dict[str, str]) -> list[Any] | None:
        import os

        from deepops_infra.ledger import quickread

        url = self.settings.ledger_url
        if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
            return []  # no ledger yet: no machines (and nothing is created by looking)
        opened = quickread.connect(url)
        if opened is None:
            return None
        conn, mark = opened
        try:
            return quickread.read_machines(conn, mark, at, include_ended=include_ended, where=where)
        finally:
            conn.close()

    def _orm_list(self, at: datetime, include_ended: bool, where: dict[str, str]) -> list[Any]:
        from sqlalchemy import select

        from deepops_infra.ledger import store
        from deepops_infra.ledger.schema import Machine

        query = select(Machine).order_by(Machine.created_at)
        if not include_ended:
            query = query.where(Machine.ended_at.is_(None))
        for column, value in where.items():
            query = query.where(getattr(Machine, column) == value)
        with self.ledger.read() as session:
            machines = list(session.scalars(query))
            spent = store.costs(session, [m.id for m in machines], at)
        return [(m, spent[m.id]) for m in machines]

    # -- change --------------------------------------------------------------------------------

    def extend(self, ref: str, ttl: str, actor: Actor = LOCAL) -> "MachineView":
        """Push a machine's expiry back by `ttl` (its whole lifetime within the team's max TTL)."""
        from deepops_infra.lifecycle import extend
        from deepops_infra.request import parse_ttl
        from deepops_infra.views import MachineView

        delta = parse_ttl(ttl)  # bad input is refused before the machine is even looked up
        m = self.get_machine(ref, actor)  # an unknown (or unseen) machine is refused before any write
        return MachineView.of(extend(self.settings, self.ledger, m.id, delta))

    def releasable(self, refs: list[str], actor: Actor = LOCAL) -> list[Target]:
        """The machines `refs` name, when every one may be released (seen by `actor`, not ended)."""
        from deepops_infra.errors import UserError

        machines = [self.get_machine(ref, actor) for ref in refs]
        for m in machines:
            if m.ended_at is not None:
                raise UserError(f"{m.id} already ended ({m.status})")
        return [Target(m.id, m.status) for m in machines]

    def release(self, machine_id: str, reason: str) -> Released:
        """End a machine: its processes, its resources, its cost (a launch in flight is asked to
        stop and release it). Callers check the actor first (releasable)."""
        from deepops_infra.lifecycle import cost_line
        from deepops_infra.views import machine_json

        m = self.get_machine(machine_id)
        ended = self.lifecycle(m.cloud).down(m, reason)
        return Released(machine_json(ended.machine, ended.cost), cost_line(ended))


def visible(actor: Actor, ref: str, find: "Callable[[], Any]") -> Any:
    """What `find()` finds for `ref`, when `actor` may see it; else NotFoundError. A name that
    several of the caller's own machines share is refused with their IDs."""
    from deepops_infra.ledger import quickread

    need(actor, *LISTERS)
    try:
        m = find()
    except NotFoundError as exc:
        if is_local(actor) or str(exc) != str(quickread.no_machine(ref)):
            raise
        m = None
    if m is None or not actor.can_see(m.owner, m.team):
        raise NotFoundError(f"no machine {ref!r} visible to you")
    return m


def get_machine(
    ref: str, caller: Actor = LOCAL, settings: "Settings | None" = None, ledger: "Ledger | None" = None
) -> "Machine":
    """One machine by ID or name, when `caller` may see it (NotFoundError otherwise): the lookup
    `deepops ssh`, ssh-config and brokered sessions use."""
    if settings is None:
        from deepops_infra.config import Settings

        settings = Settings.from_env()
    return Machines(settings, ledger).get_machine(ref, caller)
