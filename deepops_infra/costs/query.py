"""Cost aggregation in the database: the same SQLAlchemy Core statement on SQLite and PostgreSQL.

Every amount is exact. Usage intervals carry their times as integer microseconds and their
prices as micro-dollars (schema.UsageInterval), so nothing is parsed per row. A piece of an
interval (the interval clipped to the period, or to a day of the time series) costs

    cost_micro = round_half_up(price_micro_per_hour * duration_us / 3_600_000_000)

(pricing.cost_micro), written here as q1 + round_half_up(R / 3.6e9) with `P*S = 3600*q1 + r1`,
`R = r1*1e6 + P*u` so that no product passes 64 bits. A closed interval that lies wholly inside
the period is one piece whose cost the ledger stored when it closed (`cost_micro`): the same
number, read instead of computed. Sums of integers are exact on both databases.

Two levels: intervals are summed per machine first (an ordered scan of the covering index
ix_usage_intervals_machine_cost, no sort, no join), then the per-machine rows are joined with
their machine once and grouped by the report's dimensions. A machine's row says whether it had
usage in the period, so machine counts need no DISTINCT.

A report costs what its period touches, not what the ledger holds: the machines are chosen by
their usage span (machines.usage_from_us/usage_to_us, closed when a machine ends) through range
searches of migration 0006's indexes, and only their intervals and samples are read, by machine
(see _touching).

Idle time comes from utilization samples: a sample with `active = false` covers
(max(at - interval_seconds, previous sample's at), at] of its machine; `active` NULL counts as
active. Each idle stretch (clipped to the period) is priced like a usage piece, at the machine's
frozen hourly price, and counts its GPUs.
"""

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session

from deepops_infra.ledger.schema import Machine, UsageInterval, UtilizationSample
from deepops_infra.pricing import EPOCH, HOUR_US, MICRO
from deepops_infra.pricing import epoch_us as to_us

US = MICRO
_HAS_UNIXEPOCH = sqlite3.sqlite_version_info >= (3, 38)  # several times faster than strftime('%s')
__all__ = ["DIMENSIONS", "HOUR_US", "US", "Buckets", "Window", "aggregate", "finalize", "team_spend", "to_us"]

DIMENSIONS = {
    "owner": Machine.owner,
    "team": Machine.team,
    "project": Machine.project,
    "cloud": Machine.cloud,
    "gpu": func.coalesce(Machine.accelerator, "none"),
    "machine": Machine.id,
}
# Columns a report may carry beside its groups (a machine's name next to its ID): not groups of their own.
LABELS = {"name": func.coalesce(Machine.name, "")}
COLUMNS = DIMENSIONS | LABELS


@dataclass(frozen=True)
class Window:
    """What a query needs to know about time: the period, now, and where projections stop."""

    start_us: int
    end_us: int
    now_us: int
    forecast_end_us: int  # running machines are projected up to here (0: no forecast)


@dataclass(frozen=True)
class Buckets:
    """A time series grid: bucket i is [origin + i*width, origin + (i+1)*width), clipped to the window."""

    origin_us: int
    width_us: int
    count: int


def _big(value: int) -> ColumnElement[int]:
    return literal(value, BigInteger)


def epoch_us(dialect: str, column: Any) -> ColumnElement[int]:
    """Microseconds since 1970 of a ledger time column (for the few that are not stored as integers)."""
    if dialect == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        whole = func.substr(column, 1, 19)
        seconds = cast(func.unixepoch(whole) if _HAS_UNIXEPOCH else func.strftime("%s", whole), BigInteger)
        padded = type_coerce(column, String).concat("000000")  # '.25' is 250000 us
        micros = cast(func.substr(padded, 21, 6), BigInteger)
        return type_coerce(seconds * US + micros, BigInteger)
    # date_part is float8: microseconds since 1970 stay below 2**53 until the year 2255, so
    # rounding recovers them exactly.
    return cast(func.round(func.date_part("epoch", column) * US), BigInteger)


def _greatest(dialect: str, *args: Any) -> ColumnElement[int]:
    return type_coerce(func.max(*args) if dialect == "sqlite" else func.greatest(*args), BigInteger)


def _least(dialect: str, *args: Any) -> ColumnElement[int]:
    return type_coerce(func.min(*args) if dialect == "sqlite" else func.least(*args), BigInteger)


def micro_cost(price_micro: Any, duration_us: Any) -> ColumnElement[int]:
    """pricing.cost_micro in SQL: price (micro-dollars/hour) x duration (us), half-up, in 64 bits."""
    whole = duration_us // US
    frac = duration_us % US
    ps = price_micro * whole
    remainder = (ps % 3600) * US + price_micro * frac
    return ps // 3600 + (remainder * 2 + HOUR_US) // (2 * HOUR_US)


def _price_micro(dialect: str, column: Any) -> ColumnElement[int]:
    if dialect == "sqlite":  # REAL on SQLite; 6 decimals always round-trip
        return cast(func.round(column * US), BigInteger)
    return cast(column * US, BigInteger)


def _usage(dialect: str, window: Window, buckets: Buckets | None, only: Any, spanning: Any = None) -> list[Any]:
    """Per machine (and bucket): cost, GPU-microseconds, whether running, its price if so.

    `only`: the machines to read (a SELECT of machine IDs); `spanning`: those of them that may
    have an interval spanning three buckets (by default all)."""
    start, end = _big(window.start_us), _big(window.end_us)
    u = UsageInterval
    ended = func.coalesce(u.ended_us, _big(window.now_us))
    inside = [u.started_us < end, ended > start]  # overlapping the window
    read = [u.machine_id.in_(only), *inside]

    def per_machine(t: Any, b0: Any, b1: Any, bucket: Any | None, where: list[Any], froms: list[Any]) -> Any:
        """`t`: the interval columns (UsageInterval or a subquery's .c); `where`: which of them;
        `froms`: what to select from."""
        ended = func.coalesce(t.ended_us, _big(window.now_us))
        lo, hi = _greatest(dialect, t.started_us, b0), _least(dialect, ended, b1)
        whole = (t.started_us >= b0) & (t.ended_us <= b1)  # NULL (open) is never whole
        return (
            select(
                t.machine_id.label("machine_id"),
                (literal(0, Integer) if bucket is None else bucket).label("bucket"),
                func.sum(case((whole, t.cost_micro), else_=micro_cost(t.price_micro, hi - lo))).label("cost_micro"),
                func.sum(t.gpu_count * (hi - lo)).label("gpu_us"),
                _big(0).label("idle_micro"),
                _big(0).label("idle_gpu_us"),
                literal(1, Integer).label("used"),
                func.max(case((t.ended_us.is_(None), 1), else_=0)).label("open"),  # one open interval at most
                func.max(case((t.ended_us.is_(None), t.price_micro), else_=0)).label("burn_micro"),
            )
            .select_from(*froms)
            .where(*where)
            .group_by(t.machine_id, *([] if bucket is None else [bucket]))
        )

    if buckets is None:
        return [per_machine(u, start, end, None, read, [u])]
    # An interval's first and last buckets are arithmetic: one pass over the intervals with a
    # two-row table gives both ends. Only intervals spanning three buckets or more are joined
    # with the grid, for the whole buckets between their ends (a join of every interval with
    # every bucket would cost intervals x buckets).
    lo, hi = _greatest(dialect, u.started_us, start), _least(dialect, ended, end)
    origin, width = _big(buckets.origin_us), _big(buckets.width_us)
    first, last = (lo - origin) // width, (hi - 1 - origin) // width
    ends = union_all(select(literal(0, Integer).label("k")), select(literal(1, Integer).label("k"))).subquery("ends")
    idx = type_coerce(case((ends.c.k == 0, first), else_=last), BigInteger)
    b0 = _greatest(dialect, origin + idx * width, start)
    b1 = _least(dialect, origin + (idx + 1) * width, end)
    one_end = (ends.c.k == 0) | (last != first)  # an interval within one bucket is counted once
    edges = per_machine(u, b0, b1, type_coerce(idx, Integer), [*read, one_end], [u.__table__.join(ends, true())])
    long = (
        select(u, first.label("first"), last.label("last"))
        .where(u.machine_id.in_(only if spanning is None else spanning), *inside, last - first >= 2)
        .offset(0)  # materialized first: the grid is joined with these few rows only
        .subquery("long")
    )
    grid = union_all(
        *(
            select(
                literal(i, Integer).label("idx"),
                _big(max(buckets.origin_us + i * buckets.width_us, window.start_us)).label("b0"),
                _big(min(buckets.origin_us + (i + 1) * buckets.width_us, window.end_us)).label("b1"),
            )
            for i in range(buckets.count)
        )
    ).subquery("grid")
    between = per_machine(
        long.c,
        grid.c.b0,
        grid.c.b1,
        grid.c.idx,
        [grid.c.idx > long.c.first, grid.c.idx < long.c.last],
        [long.join(grid, true())],
    )
    return [edges, between]


def _idle(dialect: str, window: Window, only: Any) -> Any:
    """Per machine: the cost and GPU-microseconds of its idle stretches inside the window and
    inside the machine's own usage (idle time cannot outlast the machine)."""
    at_us = epoch_us(dialect, UtilizationSample.at)
    prev = func.lag(at_us).over(partition_by=UtilizationSample.machine_id, order_by=UtilizationSample.at)
    samples = (
        select(
            UtilizationSample.machine_id.label("machine_id"),
            UtilizationSample.active.label("active"),
            at_us.label("at_us"),
            (at_us - cast(UtilizationSample.interval_seconds, BigInteger) * US).label("from_us"),
            prev.label("prev_us"),
        )
        .where(UtilizationSample.machine_id.in_(only))
        .where(UtilizationSample.at > EPOCH + timedelta(microseconds=window.start_us))
        .offset(0)  # an optimisation fence on both databases: each time is computed once
        .subquery("smp")
    )
    since = case(
        (samples.c.prev_us.is_(None), samples.c.from_us),
        else_=_greatest(dialect, samples.c.from_us, samples.c.prev_us),
    )
    now = _big(window.now_us)
    lo = _greatest(dialect, since, _big(window.start_us), func.coalesce(Machine.usage_from_us, since))
    hi = _least(dialect, samples.c.at_us, _big(window.end_us), now, func.coalesce(Machine.usage_to_us, now))
    stretch = hi - lo
    query = (
        select(
            samples.c.machine_id,
            literal(0, Integer).label("bucket"),
            _big(0).label("cost_micro"),
            _big(0).label("gpu_us"),
            func.sum(micro_cost(_price_micro(dialect, Machine.price_per_hour), stretch)).label("idle_micro"),
            func.sum(Machine.gpu_count * stretch).label("idle_gpu_us"),
            literal(0, Integer).label("used"),
            literal(0, Integer).label("open"),
            _big(0).label("burn_micro"),
        )
        .select_from(samples.join(Machine, Machine.id == samples.c.machine_id))
        .where(samples.c.active.is_(False), hi > lo)
        .group_by(samples.c.machine_id)
    )
    return query


# How many of the longest closed machines are found by their length rather than by their start
# (see _touching): what bounds how far before a period the others start.
LONGEST = 100


def _length() -> ColumnElement[int]:
    """A closed machine's usage span, in microseconds: the expression of ix_machines_usage_length."""
    return type_coerce(Machine.usage_to_us - Machine.usage_from_us, BigInteger)


def reach_us(session: Session) -> int:
    """The usage span of the LONGEST-th longest closed machine (0 when there are fewer): a backward
    walk of LONGEST entries of ix_machines_usage_length. Read before the report's statement, so
    that the planner sees the bounds _touching derives from it."""
    length = _length()
    longest = select(length).where(length.is_not(None)).order_by(length.desc())
    return int(session.execute(longest.offset(LONGEST - 1).limit(1)).scalar() or 0)


def _touching(window: Window, reach: int, team: str | None, *, edges_only: bool, longer_than: int = 0) -> Any:
    """The IDs of the machines whose usage may touch the window: all others add nothing to it.

    A closed machine longer than `reach` (reach_us) is one of the few found by their length
    (ix_machines_usage_length); one no longer began less than `reach` before any instant it
    covers, so those crossing the window's start began in (start - reach, start) and those
    crossing its end in (end - reach, end) (ix_machines_usage). The split is exact for any
    `reach`, which only decides what is read. Plus every machine without closed totals (running,
    never started, or ended before migration 0005 closed them: ix_machines_unclosed). The long
    ones are not narrowed down to the window (one that misses it adds nothing): a range on their
    start or end would let a planner read them through ix_machines_usage instead.

    `edges_only`: the closed machines crossing an edge of the window, not those wholly inside it
    (their totals are read from their rows, see _closed); else all that overlap it.
    `longer_than`: only the closed machines whose usage spans more (told from the index entries).

    One SELECT with the parts OR'ed (PostgreSQL: a BitmapOr, SQLite: a MULTI-INDEX OR), not a
    UNION: the planner can then tell how many machines come out (a few at the edges of a month of
    a long ledger, or every machine of a short one) and choose between looking up their intervals
    and scanning them all."""
    start, end = window.start_us, window.end_us
    first, last, length = Machine.usage_from_us, Machine.usage_to_us, _length()
    long = length > max(reach, longer_than)
    enough = length > longer_than if longer_than else true()
    if edges_only:
        parts = [
            (first > start - reach) & (first < start) & (last > start) & enough,
            (first > end - reach) & (first < end) & (last > end) & enough,
            long & or_(first < start, last > end),
        ]
    else:
        parts = [(first > start - reach) & (first < end) & (last > start) & enough, long]
    unclosed = last.is_(None) & or_(first.is_(None), first < end)
    query = select(Machine.id).where(or_(*parts, unclosed))
    return query.where(Machine.team == team) if team else query


def _wholly_inside(window: Window) -> Any:
    """Machines whose totals are closed and whose whole usage lies in the window. The bound
    usage_from_us <= end (implied: usage_from_us <= usage_to_us) makes it a range of ix_machines_usage."""
    return (
        Machine.usage_to_us.is_not(None)
        & (Machine.usage_from_us >= window.start_us)
        & (Machine.usage_from_us <= window.end_us)
        & (Machine.usage_to_us <= window.end_us)
    )


_SUMS = ("cost_micro", "gpu_us", "idle_micro", "idle_gpu_us", "machines", "running", "burn_micro", "proj_micro")


def _closed(window: Window, by: Sequence[str], team: str | None) -> Any:
    """Per group: the closed totals of the machines wholly inside the window, read from their rows."""
    zero = _big(0)
    keys = [COLUMNS[name].label(name) for name in by]
    query = (
        select(
            *keys,
            literal(0, Integer).label("bucket"),
            func.sum(Machine.total_cost_micro).label("cost_micro"),
            func.sum(Machine.total_gpu_us).label("gpu_us"),
            func.sum(func.coalesce(Machine.total_idle_micro, zero)).label("idle_micro"),
            func.sum(func.coalesce(Machine.total_idle_gpu_us, zero)).label("idle_gpu_us"),
            func.count().label("machines"),
            zero.label("running"),
            zero.label("burn_micro"),
            zero.label("proj_micro"),
        )
        .where(_wholly_inside(window))
        .group_by(*keys)
    )
    return query.where(Machine.team == team) if team else query


def _added_up(dialect: str, window: Window, by: Sequence[str], parts: list[Any]) -> Any:
    """Per group (and bucket): per-machine rows from intervals and samples, joined with their machine."""
    per_machine = union_all(*parts).subquery("pm") if len(parts) > 1 else parts[0].subquery("pm")
    pm = per_machine.c
    if window.forecast_end_us:
        horizon = _least(dialect, epoch_us(dialect, Machine.expires_at), _big(window.forecast_end_us))
        ahead = _greatest(dialect, horizon - _big(window.now_us), _big(0))
        proj = case((pm.open == 1, micro_cost(pm.burn_micro, ahead)), else_=0)
    else:
        proj = literal(0, BigInteger)
    keys = [COLUMNS[name].label(name) for name in by]
    return (
        select(
            *keys,
            pm.bucket,
            func.sum(pm.cost_micro).label("cost_micro"),
            func.sum(pm.gpu_us).label("gpu_us"),
            func.sum(pm.idle_micro).label("idle_micro"),
            func.sum(pm.idle_gpu_us).label("idle_gpu_us"),
            func.sum(pm.used).label("machines"),
            func.sum(pm.open).label("running"),
            func.sum(case((pm.open == 1, pm.burn_micro), else_=0)).label("burn_micro"),
            func.sum(proj).label("proj_micro"),
        )
        .select_from(per_machine.join(Machine, Machine.id == pm.machine_id))
        .group_by(*keys, pm.bucket)
    )


def _no_jit(session: Session, dialect: str) -> None:
    """PostgreSQL's JIT spends longer compiling these expressions (measured 0.4 s of 0.9 s on a
    1M-interval ledger) than executing them; off for this transaction only."""
    if dialect == "postgresql":
        session.execute(text("SET LOCAL jit = off"))


def aggregate(
    session: Session,
    dialect: str,
    window: Window,
    by: Sequence[str],
    *,
    buckets: Buckets | None = None,
    team: str | None = None,
    top: int | None = None,
) -> list[Any]:
    """One row per group (and bucket, with `buckets`): integer micro-dollars and GPU-microseconds.

    Columns: the dimension names of `by`, bucket, cost_micro, gpu_us, idle_micro, idle_gpu_us,
    machines (with usage in the window), running, burn_micro (per hour), proj_micro (forecast).
    Idle and forecasts are left out of a time series. `top`: only the N costliest groups."""
    _no_jit(session, dialect)
    reach = reach_us(session)
    if buckets is not None:
        touching = _touching(window, reach, team, edges_only=False)
        # An interval over three buckets or more is longer than one, and so is its machine.
        spanning = _touching(window, reach, team, edges_only=False, longer_than=buckets.width_us)
        usage = _usage(dialect, window, buckets, touching, spanning)
        series = _added_up(dialect, replace(window, forecast_end_us=0), by, usage)
        return list(session.execute(series))
    # Machines with closed totals wholly inside the window are read from their rows; the others
    # (running, crossing an edge of the window, or never closed) are added up from their
    # intervals and samples. The two kinds of group rows are then summed.
    rest = _touching(window, reach, team, edges_only=True)
    added = _added_up(dialect, window, by, [*_usage(dialect, window, None, rest), _idle(dialect, window, rest)])
    both = union_all(_closed(window, by, team), added).subquery("groups")
    keys = [both.c[name] for name in by]
    query = select(*keys, *(func.sum(both.c[name]).label(name) for name in _SUMS))
    if keys:
        query = query.group_by(*keys)
    if top is not None:  # the most expensive groups only
        query = query.order_by(func.sum(both.c.cost_micro).desc(), *keys).limit(top)
    return list(session.execute(query))


def team_spend(session: Session, dialect: str, window: Window, team: str) -> int:
    """A team's cost in the window, in micro-dollars (the budget refusal rule asks inside its transaction)."""
    touching = _touching(window, reach_us(session), team, edges_only=False)
    usage = _usage(dialect, window, None, touching)[0].subquery("pm")
    return int(session.execute(select(func.sum(usage.c.cost_micro))).scalar() or 0)


def finalize(session: Session, dialect: str, machine_ids: Sequence[str] | None, now_us: int | None = None) -> int:
    """Close the totals of ended machines (`machine_ids`, or every ended one) whose intervals are
    all closed: the same sums a report would make over a period that holds the whole machine.
    Returns how many machines were closed."""
    from sqlalchemy import update

    from deepops_infra.pricing import epoch_us as _epoch_us

    now_us = now_us if now_us is not None else _epoch_us(datetime.now(UTC))
    ended = select(Machine.id).where(Machine.ended_at.is_not(None))
    if machine_ids is not None:
        ended = ended.where(Machine.id.in_(list(machine_ids)))
    u = UsageInterval
    usage = session.execute(
        select(
            u.machine_id,
            func.min(u.started_us),
            func.max(u.ended_us),
            func.sum(u.cost_micro),
            func.sum(u.gpu_count * (u.ended_us - u.started_us)),
        )
        .where(u.machine_id.in_(ended))
        .group_by(u.machine_id)
        .having(func.count(u.ended_us) == func.count())  # every interval closed
    ).all()
    if not usage:
        return 0
    closed = [
        {"mid": mid, "f": first, "t": last, "c": int(cost), "g": int(gpu), "i": 0, "ig": 0}
        for mid, first, last, cost, gpu in usage
    ]
    statement = (
        update(Machine)
        .where(Machine.id == bindparam("mid"))
        .values(
            usage_from_us=bindparam("f"),
            usage_to_us=bindparam("t"),
            total_cost_micro=bindparam("c"),
            total_gpu_us=bindparam("g"),
            total_idle_micro=bindparam("i"),
            total_idle_gpu_us=bindparam("ig"),
        )
    )
    connection = session.connection()
    connection.execute(statement, closed)
    # Idle time is clipped to the usage span just written.
    everything = Window(0, now_us, now_us, 0)
    idle = session.execute(_idle(dialect, everything, ended.where(Machine.usage_to_us.is_not(None)))).all()
    if idle:
        connection.execute(
            update(Machine)
            .where(Machine.id == bindparam("mid"))
            .values(total_idle_micro=bindparam("i"), total_idle_gpu_us=bindparam("ig")),
            [{"mid": r.machine_id, "i": int(r.idle_micro), "ig": int(r.idle_gpu_us)} for r in idle],
        )
    return len(closed)
