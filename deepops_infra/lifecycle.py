"""The machine lifecycle, written once for every provider.

requested -> provisioning -> configuring -> validating -> ready -> terminating -> terminated,
with failed reachable before ready. The machine row (and its reservation) is committed before
any provider call, every step is an event, and `terminated` is written only after the provider
confirms the resources are gone.
"""

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deepops_infra import states
from deepops_infra.config import Settings
from deepops_infra.errors import DeepopsError, OperationError, UserError
from deepops_infra.images import Image
from deepops_infra.intake import admission_checks
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.liveness import LAUNCHER_EVENT, LaunchLocks
from deepops_infra.ledger.schema import Event, Machine
from deepops_infra.policy import check_ttl
from deepops_infra.progress import Progress
from deepops_infra.providers.base import Plan, Provider, ProvisionError
from deepops_infra.request import MachineRequest
from deepops_infra.service import offers

RESERVE_ATTEMPTS = 5
CREATE_ATTEMPTS = 3  # offers tried when a create fails for capacity or quota


@dataclass
class Ended:
    machine: Machine
    cost: Decimal
    ran_for: timedelta


class Lifecycle:
    def __init__(self, settings: Settings, ledger: Ledger, provider: Provider, progress: Progress) -> None:
        self.settings = settings
        self.ledger = ledger
        self.provider = provider
        self.progress = progress

    # -- up ----------------------------------------------------------------------------------

    def record(self, request: MachineRequest, image: Image, plans: list[Plan]) -> Machine:
        """Write the machine and its reservation in one transaction (intent before resources)."""
        self.provider.preflight(plans)  # a missing CLI or credentials: refused before anything is written
        locks = LaunchLocks.of(self.ledger)
        for attempt in range(RESERVE_ATTEMPTS):
            machine_id = store.new_machine_id()
            locks.hold(machine_id)  # before the row: a machine with a launcher event has its lock from the start
            try:
                with self.ledger.write() as session:
                    if self.ledger.dialect == "postgresql":
                        # Serialize a team's requests so its GPU limit cannot be raced past.
                        session.execute(
                            text("SELECT pg_advisory_xact_lock(hashtext(:team))"),
                            {"team": "deepops-team:" + request.team},
                        )
                    if request.name and store.live_name_taken(session, request.name, request.owner):
                        raise UserError(
                            f"--name: {request.owner} already has a machine called {request.name!r} that has "
                            "not ended; pick another name or end that machine first"
                        )
                    admission_checks(self.settings, session, request)  # the same as --dry-run's
                    at = store.now()
                    machine = Machine(
                        id=machine_id,
                        name=request.name,
                        status=states.REQUESTED,
                        cloud=plans[0].cloud,
                        region=None,
                        host=None,
                        owner=request.owner,
                        team=request.team,
                        project=request.project,
                        image=image.name,
                        image_pin=plans[0].image_pin,
                        accelerator=request.gpus.model,
                        gpu_count=request.gpus.count,
                        request=request.to_json(),
                        plan={},
                        provider_refs={},
                        price_per_hour=plans[0].price.per_hour,
                        price_breakdown=plans[0].price.to_json(),
                        created_at=at,
                        expires_at=at + request.ttl,
                    )
                    session.add(machine)
                    session.flush()
                    store.add_event(
                        session,
                        machine,
                        "transition",
                        "requested by " + request.owner,
                        to_status=states.REQUESTED,
                        data={"request": request.to_json()},
                        at=at,
                        first=True,
                    )
                    store.add_event(
                        session,
                        machine,
                        LAUNCHER_EVENT,
                        f"launched by process {os.getpid()} on {socket.gethostname()}",
                        data={"pid": os.getpid(), "host": socket.gethostname(), "lock": locks.kind},
                        at=at,
                    )
                    plan = self.provider.reserve(session, machine, plans)
                    machine.plan = plan.to_json() | {"alternatives": len(plans) - 1}
                    machine.cloud, machine.region, machine.host = plan.cloud, plan.region, plan.host
                    machine.accelerator = plan.accelerator
                    machine.image_pin = plan.image_pin
                    machine.price_per_hour = plan.price.per_hour
                    machine.price_breakdown = plan.price.to_json()
                    # The next offers, for a retry on capacity: in the ledger, for whoever launches it.
                    offers.keep(session, machine, offers.fallbacks(plans, plan))
                if plan.cloud != self.provider.cloud and self.provider.cloud != "auto":
                    # `--cloud onprem` placed it on a cluster: that target's provider makes it from here on
                    from deepops_infra.providers import get_provider

                    self.provider = get_provider(plan.cloud, self.settings, self.ledger)
                return machine
            except BaseException as exc:
                locks.release(machine_id)
                if not isinstance(exc, IntegrityError) or attempt == RESERVE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _step(self, machine: Machine, status: str, reason: str, **fields: Any) -> None:
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            if row.ended_at is not None or row.status in (states.FAILED, states.TERMINATING, states.TERMINATED):
                raise _TakenOver(f"{machine.id} is {row.status}: ended by another command while launching")
            if (released := _cancel_reason(session, row.id)) is not None:
                raise OperationError(f"{machine.id}: {released}")  # launch() sees the request and releases it
            if not states.can_transition(row.status, status):
                raise OperationError(f"{machine.id} is {row.status} (changed by another command); stopping")
            if status == states.READY:
                fields = {**fields, **_ready_times(row)}
            store.transition(session, row, status, reason)
            for key, value in fields.items():
                setattr(row, key, value)
            if status == states.PROVISIONING:
                store.open_usage(session, row, store.now())
        machine.status, machine.status_reason = status, reason
        for key, value in fields.items():
            setattr(machine, key, value)

    def _save(self, machine: Machine, **fields: Any) -> None:
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id)
            for key, value in fields.items():
                setattr(row, key, value)
                setattr(machine, key, value)

    def launch(self, machine: Machine, image: Image, keep_on_failure: bool = False) -> Machine:
        """Take a recorded machine to ready; on any failure it ends `failed` and is torn down.
        On a capacity error the next offers `record` kept in the ledger are tried."""
        from deepops_infra.ansible import PLAY_CANCEL

        created = False
        cancel = PLAY_CANCEL.set(self._cancel_check(machine.id))  # a release stops a play in flight
        try:
            with self.progress.step(f"provisioning {machine.id} on {machine.host or machine.region}"):
                self._step(machine, states.PROVISIONING, "creating resources")
                refs = self._create_with_fallback(machine)
                created = True
                self._save(machine, provider_refs=refs)
            with self.progress.step(f"configuring image {image.name}"):
                self._step(machine, states.CONFIGURING, f"installing {image.name} ({machine.image_pin})")
                self._save(machine, manifest=self.provider.configure(machine, image, self.progress))
            with self.progress.step("validating"):
                self._step(machine, states.VALIDATING, "checking the machine against the order")
                result = self.provider.validate(machine, image, self.progress)
                self._save(machine, validation=result)
                if not result["passed"]:
                    failed = "; ".join(c["name"] + ": " + c["detail"] for c in result["checks"] if not c["passed"])
                    raise OperationError(f"validation failed: {failed}")
            self._step(machine, states.READY, "ready")
            tell_agent(self.settings, self.ledger, machine, "deepops up: ready", self.provider)
            return machine
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            # Whatever stopped the launch, the machine must not be left half-made, nor torn down twice.
            self._stopped(machine, exc, created)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                reason = "interrupted"
            elif isinstance(exc, DeepopsError | ProvisionError):
                reason = str(exc)
            else:
                reason = f"internal error: {type(exc).__name__}: {exc}"
            if isinstance(exc, ProvisionError):
                created = exc.created
            self.fail(machine, reason, teardown=not keep_on_failure, created=created)
            if isinstance(exc, ProvisionError):
                raise OperationError(f"{machine.id} failed: {exc}") from None
            raise
        finally:
            PLAY_CANCEL.reset(cancel)
            LaunchLocks.of(self.ledger).release(machine.id)  # after the last write: see ledger/liveness.py

    def _stopped(self, machine: Machine, exc: BaseException, created: bool) -> None:
        """A launch stopped because another command ended the machine (it tears down: nothing to do
        here unless resources appeared after it had), or because its release was asked for (released
        here, once). Raises what the launcher reports; returns for a plain failure."""
        if isinstance(exc, _TakenOver):
            with self.ledger.read() as session:
                ended = store.find_machine(session, machine.id).ended_at is not None
            if created and ended:
                self._teardown(machine, "resources made while another command ended the machine")
            raise OperationError(str(exc)) from None
        with self.ledger.read() as session:
            released = _cancel_reason(session, machine.id)
        if released is None:
            return
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            _begin_release(session, row, released)
            machine.status, machine.status_reason = row.status, row.status_reason
        try:
            with self.progress.step(f"releasing {machine.id}"):
                self._teardown(machine, released)
        except DeepopsError as exc2:
            raise OperationError(
                f"{released}; teardown failed ({exc2}); retry with `deepops down {machine.id} --yes`"
            ) from None
        raise OperationError(f"{machine.id} was released while it launched: {released}") from None

    def _cancel_check(self, machine_id: str) -> Callable[[], bool]:
        """For plays: whether the machine's release was asked for (the ledger is read every few seconds)."""
        seen = {"at": 0.0, "released": False}

        def released() -> bool:
            if not seen["released"] and time.monotonic() - float(seen["at"]) >= CANCEL_POLL_SECONDS:
                seen["at"] = time.monotonic()
                try:
                    with self.ledger.read() as session:
                        seen["released"] = _cancel_reason(session, machine_id) is not None
                except Exception:  # the ledger out of reach for a moment: the play goes on
                    pass
            return bool(seen["released"])

        return released

    def _create_with_fallback(self, machine: Machine) -> dict[str, Any]:
        """Create; when the offer has no capacity or quota, destroy what was made and try the next
        offer (at most CREATE_ATTEMPTS), each attempt an event with its offer and outcome."""
        with self.ledger.read() as session:
            fallbacks = offers.kept(session, machine.id)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            offer = {k: machine.plan.get(k) for k in ("region", "instance_type", "host", "price_per_hour")}
            try:
                return self.provider.create(machine, self.progress)
            except ProvisionError as exc:
                self._attempt_event(machine, attempt, offer, str(exc))
                if not exc.retryable or not fallbacks or attempt == CREATE_ATTEMPTS:
                    raise
                if exc.created:
                    self._teardown_attempt(machine)
                self._switch_offer(machine, fallbacks.pop(0), attempt)
        raise AssertionError("unreachable")

    def _attempt_event(self, machine: Machine, attempt: int, offer: dict[str, Any], error: str) -> None:
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id)
            store.add_event(
                session, row, "create-attempt", f"attempt {attempt} failed: {error}", data={"attempt": attempt, **offer}
            )

    def _teardown_attempt(self, machine: Machine) -> None:
        """Destroy a failed attempt's partial resources before trying another offer."""
        try:
            with _not_cancellable():
                self.provider.destroy(machine, self.progress)
        except DeepopsError as exc:
            raise ProvisionError(
                f"could not remove the failed attempt ({exc}); not trying another offer", True
            ) from None

    def _switch_offer(self, machine: Machine, plan: Plan, attempt: int) -> None:
        """Move the machine onto the next offer; the failed attempt's time stays at its own price."""
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            at = store.now()
            store.close_usage(session, row, at)
            fields = {
                "plan": plan.to_json() | {"alternatives": machine.plan.get("alternatives", 0) - 1},
                "region": plan.region,
                "host": plan.host,
                "accelerator": plan.accelerator,
                "image_pin": plan.image_pin,
                "price_per_hour": plan.price.per_hour,
                "price_breakdown": plan.price.to_json(),
                "provider_refs": {},
            }
            for key, value in fields.items():
                setattr(row, key, value)
                setattr(machine, key, value)
            store.add_event(
                session,
                row,
                "create-retry",
                f"attempt {attempt + 1}: {plan.instance_type or plan.host} in {plan.region} at {plan.price.per_hour}/h",
                data={"attempt": attempt + 1, "region": plan.region, "instance_type": plan.instance_type},
                at=at,
            )
            store.open_usage(session, row, at)

    def fail(self, machine: Machine, reason: str, teardown: bool = True, created: bool = True) -> None:
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            if states.can_transition(row.status, states.FAILED):
                store.transition(session, row, states.FAILED, reason)
                machine.status, machine.status_reason = states.FAILED, reason
            if not teardown:  # in the same transaction: no reaper cycle sees it failed and not kept
                store.add_event(
                    session,
                    row,
                    "kept",
                    f"kept for debugging (--keep-on-failure); end it with `deepops down {machine.id} --yes`",
                )
        if not teardown:
            return
        try:
            with self.progress.step(f"tearing down {machine.id}"):
                self._teardown(machine, "teardown after failure")
        except DeepopsError as exc:
            # The original failure is what the user must see; the teardown is retried later.
            raise OperationError(
                f"{reason}; teardown failed too ({exc}); retry with `deepops down {machine.id} --yes`"
            ) from None

    # -- down --------------------------------------------------------------------------------

    def _teardown(self, machine: Machine, reason: str) -> None:
        """Destroy through the provider; close the record only once that is confirmed."""
        try:
            with _not_cancellable():
                self.provider.destroy(machine, self.progress)
        except DeepopsError as exc:
            with self.ledger.write() as session:
                row = store.find_machine(session, machine.id)
                store.add_event(session, row, "teardown-failed", str(exc))
            raise
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            at = store.now()
            if row.ended_at is not None:  # closed already (by whoever took it over): its end stays
                store.add_event(session, row, "teardown", reason + ": resources confirmed gone", at=at)
                machine.status, machine.ended_at = row.status, row.ended_at
                return
            if row.status == states.TERMINATING:
                store.transition(session, row, states.TERMINATED, reason, at=at)
            else:
                store.add_event(session, row, "teardown", reason + ": resources confirmed gone", at=at)
            store.end_machine(session, row, at)
            self.provider.release_reservation(session, row, at)
            machine.status, machine.ended_at = row.status, at

    def down(self, machine: Machine, reason: str) -> Ended:
        """Release a machine. One whose launch is making resources right now (its launcher alive) is
        not torn down from here: the launch is asked to stop and release it, and this waits for that,
        so that the machine is torn down once and closed once."""
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id, for_update=True)
            if row.ended_at is not None:
                raise UserError(f"{row.id} already ended ({row.status} at {row.ended_at:%Y-%m-%d %H:%M}Z)")
            # Its launcher making it, or releasing or failing it already: that process tears it down.
            launching = row.status in (*LAUNCHING, *ENDING) and LaunchLocks.of(self.ledger).alive(row.id)
            if launching and row.status in LAUNCHING:
                store.add_event(session, row, CANCEL_EVENT, f"{reason} while it was {row.status}")
            elif not launching:
                _begin_release(session, row, reason)
            machine.status = row.status
        if launching:
            return self._await_launch(machine, reason)
        with self.progress.step(f"releasing {machine.id} on {machine.host or machine.region}"):
            self._teardown(machine, reason)
        return self._ended(machine)

    def _await_launch(self, machine: Machine, reason: str) -> Ended:
        """Wait for a launch asked to stop to release its machine; take the release over when its
        launcher ends without having closed it (killed, or its teardown failed)."""
        locks = LaunchLocks.of(self.ledger)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        with self.progress.step(f"stopping the launch of {machine.id}, then releasing it"):
            while True:
                alive = locks.alive(machine.id)  # first: a launcher lets go only after its last write
                with self.ledger.read() as session:
                    row = store.find_machine(session, machine.id)
                if row.ended_at is not None:
                    break
                if not alive:
                    return self.down(row, reason)
                if time.monotonic() > deadline:
                    raise OperationError(
                        f"{machine.id}: its launch was asked to stop and has not yet (it releases the machine "
                        f"once its current step is over); see `deepops show {machine.id}`"
                    )
                time.sleep(CANCEL_POLL_SECONDS / 4)
        machine.status, machine.status_reason, machine.ended_at = row.status, row.status_reason, row.ended_at
        return self._ended(machine)

    def _ended(self, machine: Machine) -> Ended:
        with self.ledger.read() as session:
            spent = store.costs(session, [machine.id])[machine.id]
        return Ended(machine, spent, (machine.ended_at or store.now()) - machine.created_at)


LAUNCHING = (states.PROVISIONING, states.CONFIGURING, states.VALIDATING)  # resources being made
ENDING = (states.TERMINATING, states.FAILED)  # a launcher in these is tearing its machine down
CANCEL_EVENT = "cancel"  # a release asked for while the machine launched: its launcher releases it
CANCEL_POLL_SECONDS = 2.0
CANCEL_WAIT_SECONDS = 1800.0  # the longest step a launch may finish before it sees the request


@contextlib.contextmanager
def _not_cancellable() -> Iterator[None]:
    """A teardown's plays run to their end, whatever release was asked for meanwhile."""
    from deepops_infra.ansible import PLAY_CANCEL

    token = PLAY_CANCEL.set(None)
    try:
        yield
    finally:
        PLAY_CANCEL.reset(token)


class _TakenOver(OperationError):
    """Another command ended the machine while it launched: it owns the teardown."""


def _cancel_reason(session: Session, machine_id: str) -> str | None:
    """Why the machine's release was asked for while it launched; None when it was not."""
    query = select(Event.reason).where(Event.machine_id == machine_id, Event.kind == CANCEL_EVENT)
    found = session.execute(query.order_by(Event.id).limit(1)).first()
    return None if found is None else str(found[0] or "released")


def _begin_release(session: Session, row: Machine, reason: str) -> None:
    """The transition a release starts with: terminating, or failed when nothing was provisioned."""
    if states.can_transition(row.status, states.TERMINATING):
        store.transition(session, row, states.TERMINATING, reason)
    elif states.can_transition(row.status, states.FAILED):
        store.transition(session, row, states.FAILED, f"{reason} before it was provisioned")


def _ready_times(row: Machine) -> dict[str, Any]:
    """ready_at, and the expiry: the TTL counts from ready, plus what `extend` granted meanwhile."""
    ready, ttl = store.now(), timedelta(seconds=int(row.request["ttl"]))
    granted = max(timedelta(0), row.expires_at - (row.created_at + ttl))
    return {"ready_at": ready, "expires_at": ready + ttl + granted}


def tell_agent(settings: Settings, ledger: Ledger, machine: Machine, by: str, provider: Provider | None = None) -> None:
    """Give the machine's agent the ledger's expiry now (at ready, after an extend): its dead-man
    switch then ends the machine at the moment the ledger says. A failure is recorded on the
    machine; the reaper's next check-in carries the same."""
    from deepops_infra.agent.settings import agent_control

    try:
        if provider is None:
            from deepops_infra.providers import get_provider

            provider = get_provider(machine.cloud, settings, ledger)
        provider.checkin(machine, agent_control(settings, machine, by))
    except Exception as exc:
        with ledger.write() as session:
            row = store.find_machine(session, machine.id)
            store.add_event(session, row, "checkin-failed", f"{by}: {type(exc).__name__}: {exc}"[:500])


def extend(settings: Settings, ledger: Ledger, ref: str, ttl: timedelta) -> Machine:
    """Push a machine's expiry back by `ttl`; its whole lifetime stays within the team's max_ttl."""
    with ledger.write() as session:
        machine = store.find_machine(session, ref, for_update=True)
        if machine.ended_at is not None or machine.status in (states.FAILED, states.TERMINATING):
            raise UserError(f"{machine.id} is {machine.status}; only a live machine can be extended")
        at = store.now()
        new_expiry = max(machine.expires_at, at) + ttl
        lifetime = new_expiry - (machine.ready_at or machine.created_at)
        check_ttl(lifetime, settings.config.policy_for(machine.team), machine.team, what="the machine's lifetime")
        if machine.cloud == "slurm":  # the scheduler's time limit moves first; its refusal is the answer
            from deepops_infra.providers import get_provider

            get_provider(machine.cloud, settings, ledger).extend_to(machine, new_expiry)
        store.add_event(
            session,
            machine,
            "extend",
            f"extended by {ttl}",
            data={"from": machine.expires_at.isoformat(), "to": new_expiry.isoformat()},
            at=at,
        )
        machine.expires_at = new_expiry
    if machine.status in (states.READY, states.IDLE):  # a launching machine's agent learns it at ready
        tell_agent(settings, ledger, machine, "deepops extend")
    return machine


def cost_line(ended: Ended) -> str:
    from deepops_infra.durations import format_duration
    from deepops_infra.money import price_words, rate
    from deepops_infra.pricing import dollars

    m = ended.machine
    basis = price_words(m.price_breakdown)
    return (
        f"{m.id} {m.status} after {format_duration(ended.ran_for)}: {dollars(ended.cost)} "
        f"at {rate(m.price_per_hour)}" + (f" ({basis})" if basis else "")
    )
