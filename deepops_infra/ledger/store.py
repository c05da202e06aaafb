"""Ledger operations shared by every command: machines, their events, usage and costs."""

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepops_infra.ledger import quickread
from deepops_infra.ledger.schema import Event, GpuLease, Machine, UsageInterval
from deepops_infra.pricing import epoch_us, interval_cost_micro, micro_dollars
from deepops_infra.states import can_transition


def now() -> datetime:
    return datetime.now(UTC)


def new_machine_id() -> str:
    return f"m-{secrets.token_hex(4)}"


def add_event(
    session: Session,
    machine: Machine,
    kind: str,
    reason: str | None = None,
    *,
    to_status: str | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
    first: bool = False,
) -> Event:
    event = Event(
        machine_id=machine.id,
        at=at or now(),
        kind=kind,
        from_status=None if first else machine.status,
        to_status=to_status,
        reason=reason,
        data=data,
    )
    session.add(event)
    return event


def transition(
    session: Session,
    machine: Machine,
    status: str,
    reason: str,
    at: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Move a machine to a new status and append the event; refuses moves the lifecycle forbids."""
    if not can_transition(machine.status, status):
        raise ValueError(f"{machine.id}: {machine.status} -> {status} is not a lifecycle transition")
    at = at or now()
    add_event(session, machine, "transition", reason, to_status=status, data=data, at=at)
    machine.status = status
    machine.status_reason = reason


def open_usage(session: Session, machine: Machine, at: datetime) -> None:
    started = epoch_us(at)
    if machine.usage_from_us is None or started < machine.usage_from_us:
        machine.usage_from_us = started
    session.add(
        UsageInterval(
            machine_id=machine.id,
            started_at=at,
            ended_at=None,
            price_per_hour=machine.price_per_hour,
            gpu_count=machine.gpu_count,
        )
    )


def close_usage(session: Session, machine: Machine, at: datetime) -> None:
    for interval in session.scalars(
        select(UsageInterval).where(UsageInterval.machine_id == machine.id, UsageInterval.ended_at.is_(None))
    ):
        interval.ended_at = max(at, interval.started_at)


def end_machine(session: Session, machine: Machine, at: datetime) -> None:
    """The machine's resources are confirmed gone at `at`: close its usage and its totals."""
    from deepops_infra.costs.query import finalize

    machine.ended_at = at
    close_usage(session, machine, at)
    session.flush()
    finalize(session, session.get_bind().dialect.name, [machine.id], epoch_us(at))
    session.refresh(machine)


def find_machine(
    session: Session, ref: str, *, for_update: bool = False, within: dict[str, str] | None = None
) -> Machine:
    """By ID, or by name among machines that have not ended (names are reused after); `within`
    (column: value, e.g. {"owner": name}) narrows the name lookup to what a caller sees."""
    query = select(Machine).where(Machine.id == ref)
    if for_update:
        query = query.with_for_update()
    machine = session.scalars(query).first()
    if machine is None:
        scope = [getattr(Machine, column) == value for column, value in (within or {}).items()]
        named = session.scalars(select(Machine).where(Machine.name == ref, Machine.ended_at.is_(None), *scope)).all()
        if len(named) > 1:
            raise quickread.ambiguous_name(ref, [m.id for m in named])
        machine = named[0] if named else None
    if machine is None:
        raise quickread.no_machine(ref)
    return machine


def list_machines(session: Session, include_ended: bool = False, owner: str | None = None) -> list[Machine]:
    query = select(Machine).order_by(Machine.created_at)
    if not include_ended:
        query = query.where(Machine.ended_at.is_(None))
    if owner:
        query = query.where(Machine.owner == owner)
    return list(session.scalars(query))


def live_name_taken(session: Session, name: str, owner: str) -> bool:
    """Whether `owner` has a machine called `name` that has not ended. Names are unique per owner:
    whoever may request for an owner sees the owner's machines, so a refusal tells them nothing
    new (a member sees their own machines only, not even their team's)."""
    query = select(func.count()).select_from(Machine)
    return session.scalar(query.where(Machine.name == name, Machine.owner == owner, Machine.ended_at.is_(None))) > 0


def running_gpus(session: Session, team: str) -> int:
    """GPUs held right now by the team's machines that have not ended."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Machine.gpu_count), 0)).where(
                Machine.team == team, Machine.ended_at.is_(None)
            )
        )
        or 0
    )


def costs(session: Session, machine_ids: Iterable[str], at: datetime | None = None) -> dict[str, Decimal]:
    """Cost so far per machine, from its usage intervals at their frozen prices (the integer
    columns, as ledger.quickread reads them)."""
    ids = list(machine_ids)
    now_us = epoch_us(at or now())
    totals: dict[str, int] = dict.fromkeys(ids, 0)
    if ids:
        u = UsageInterval
        query = select(u.machine_id, u.started_us, u.ended_us, u.price_micro, u.cost_micro)
        if len(ids) < 900:  # past that, one scan beats an IN list the database must parse
            query = query.where(u.machine_id.in_(ids))
        for machine_id, *interval in session.execute(query):
            if machine_id in totals:
                totals[machine_id] += interval_cost_micro(*interval, now_us)
    return {mid: micro_dollars(total) for mid, total in totals.items()}


def events(session: Session, machine_id: str) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.machine_id == machine_id).order_by(Event.id)))


def leased_gpus(session: Session, machine_id: str) -> list[int]:
    return sorted(
        session.scalars(
            select(GpuLease.gpu_index).where(GpuLease.machine_id == machine_id, GpuLease.released_at.is_(None))
        )
    )


def installation_id(ledger_write_session: Session) -> str:
    """This installation's ID (generated once), tagged on every resource it creates."""
    from deepops_infra.ledger.schema import InstallationSetting

    row = ledger_write_session.get(InstallationSetting, "installation_id")
    if row is None:
        row = InstallationSetting(key="installation_id", value=f"inst-{secrets.token_hex(6)}")
        ledger_write_session.add(row)
        ledger_write_session.flush()
    return row.value
