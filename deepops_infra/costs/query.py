"""Cost aggregation in the database: the same SQLAlchemy Core statement on SQLite and PostgreSQL.

Every amount is exact. Times become integer microseconds since the epoch (written per
database, with GREATEST/LEAST versus SQLite's MAX/MIN), each usage interval is clipped to the
period (and to each day for the time series), and its cost is computed in integer micro-dollars with the rounding of
`pricing.cost` (half-up to the micro-dollar, per interval piece):

    cost_micro = round_half_up(price_micro_per_hour * duration_us / 3_600_000_000)

split as q1 + round_half_up(R / 3.6e9) with `P*S = 3600*q1 + r1`, `R = r1*1e6 + P*u`, so no
product overflows 64 bits. Sums of integers are exact on both databases.

Each piece carries its machine's group keys from one join in the innermost scan, so the
grouping needs no join over the pieces (which SQLite would materialize).

Idle time comes from utilization samples: a sample with `active = false` covers
(max(at - interval_seconds, previous sample's at), at] of its machine; `active` NULL counts as
active. Each idle stretch (clipped to the period) is priced like a usage piece, at the machine's
frozen hourly price, and counts its GPUs.
"""

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    case,
    cast,
    func,
    literal,
    select,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.orm import Session

from deepops_infra.ledger.schema import Machine, UsageInterval, UtilizationSample

US = 1_000_000
HOUR_US = 3_600_000_000

_HAS_UNIXEPOCH = sqlite3.sqlite_version_info >= (3, 38)  # several times faster than strftime('%s')

DIMENSIONS = {
    "owner": Machine.owner,
    "team": Machine.team,
    "project": Machine.project,
    "cloud": Machine.cloud,
    "gpu": func.coalesce(Machine.accelerator, "none"),
    "machine": Machine.id,
}


def epoch_us(dialect: str, column: Any) -> ColumnElement[int]:
    """Microseconds since 1970 of a ledger time column, as a 64-bit integer."""
    if dialect == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC)
        # Whole seconds only: SQLite's own clock keeps milliseconds and would round .9995 up.
        whole = func.substr(column, 1, 19)
        seconds = cast(func.unixepoch(whole) if _HAS_UNIXEPOCH else func.strftime("%s", whole), BigInteger)
        micros = cast(func.substr(column, 21, 6), BigInteger)
        return type_coerce(seconds * US + func.coalesce(micros, 0), BigInteger)
    # date_part is float8 (several times faster than EXTRACT's numeric): microseconds since 1970
    # stay below 2**53 until the year 2255, so rounding recovers them exactly.
    return cast(func.round(func.date_part("epoch", column) * US), BigInteger)


def to_us(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=at.tzinfo)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def _greatest(dialect: str, *args: Any) -> ColumnElement[int]:
    return type_coerce(func.max(*args) if dialect == "sqlite" else func.greatest(*args), BigInteger)


def _least(dialect: str, *args: Any) -> ColumnElement[int]:
    return type_coerce(func.min(*args) if dialect == "sqlite" else func.least(*args), BigInteger)


def micro_cost(price_micro: Any, duration_us: Any) -> ColumnElement[int]:
    """price (micro-dollars/hour) x duration (us), half-up to the micro-dollar, in 64-bit integers."""
    whole = duration_us // US
    frac = duration_us % US
    ps = price_micro * whole
    remainder = (ps % 3600) * US + price_micro * frac
    return ps // 3600 + (remainder * 2 + HOUR_US) // (2 * HOUR_US)


@dataclass(frozen=True)
class Window:
    """What a query needs to know about time: the period, now, and where projections stop."""

    start_us: int
    end_us: int
    now_us: int
    forecast_end_us: int  # running machines are projected up to here (0: no forecast)


def _price_micro(dialect: str, column: Any) -> ColumnElement[int]:
    if dialect == "sqlite":  # REAL on SQLite; 6 decimals always round-trip
        return cast(func.round(column * US), BigInteger)
    return cast(column * US, BigInteger)


def _dims(by: Sequence[str]) -> list[Any]:
    return [DIMENSIONS[name].label(f"d_{name}") for name in by]


def _intervals(
    dialect: str, start: datetime, end: datetime, window: Window, by: Sequence[str], team: str | None
) -> Any:
    """Usage intervals overlapping the period, joined with their machine's group keys, with
    integer times (fenced: each expression computed once per row, not once per reference)."""
    ended = UsageInterval.ended_at
    cols: list[Any] = [
        UsageInterval.machine_id.label("machine_id"),
        *_dims(by),
        UsageInterval.gpu_count.label("gpus"),
        _price_micro(dialect, UsageInterval.price_per_hour).label("price"),
        epoch_us(dialect, UsageInterval.started_at).label("s_us"),
        case((ended.is_(None), literal(window.now_us, BigInteger)), else_=epoch_us(dialect, ended)).label("e_us"),
        case((ended.is_(None), 1), else_=0).label("open"),
    ]
    if window.forecast_end_us:
        expires = epoch_us(dialect, Machine.expires_at)
        cols.append(case((ended.is_(None), expires), else_=0).label("x_us"))
    return (
        select(*cols)
        .select_from(UsageInterval.__table__.join(Machine.__table__, Machine.id == UsageInterval.machine_id))
        .where(UsageInterval.started_at < end, (ended.is_(None)) | (ended > start))
        .where(Machine.team == team if team else true())
        .offset(0)  # an optimisation fence on both databases
        .subquery("iv")
    )


def _idle_samples(dialect: str, start: datetime, by: Sequence[str], team: str | None) -> Any:
    at_us = epoch_us(dialect, UtilizationSample.at)
    prev = func.lag(at_us).over(partition_by=UtilizationSample.machine_id, order_by=UtilizationSample.at)
    inner = (
        select(
            UtilizationSample.machine_id.label("machine_id"),
            UtilizationSample.active.label("active"),
            at_us.label("at_us"),
            (at_us - cast(UtilizationSample.interval_seconds, BigInteger) * US).label("from_us"),
            prev.label("prev_us"),
        )
        .where(UtilizationSample.at > start)
        .offset(0)
        .subquery("smp")
    )
    return (
        select(
            inner.c.machine_id,
            *_dims(by),
            Machine.gpu_count.label("gpus"),
            _price_micro(dialect, Machine.price_per_hour).label("price"),
            case(
                (inner.c.prev_us.is_(None), inner.c.from_us),
                else_=_greatest(dialect, inner.c.from_us, inner.c.prev_us),
            ).label("from_us"),
            inner.c.at_us,
        )
        .select_from(inner.join(Machine, Machine.id == inner.c.machine_id))
        .where(inner.c.active.is_(False))
        .where(Machine.team == team if team else true())
        .offset(0)
        .subquery("idle")
    )


def pieces(
    dialect: str,
    start: datetime,
    end: datetime,
    window: Window,
    buckets: Sequence[tuple[int, int]] | None,
    by: Sequence[str] = (),
    team: str | None = None,
) -> Any:
    """One row per (interval or idle stretch) x bucket, with the group keys `d_<dimension>`.

    Columns: machine_id, d_*, bucket, price, gpus, cost_us, idle_us, open, proj_us, kind (0 cost, 1 idle).
    """
    iv = _intervals(dialect, start, end, window, by, team)
    zero_bucket = literal(0, Integer)
    if buckets is None:
        b0, b1, bucket, bucket_from = literal(window.start_us, BigInteger), literal(window.end_us, BigInteger), None, []
    else:
        rows = [
            select(
                literal(i, Integer).label("idx"), literal(a, BigInteger).label("b0"), literal(b, BigInteger).label("b1")
            )
            for i, (a, b) in enumerate(buckets)
        ]
        bt = union_all(*rows).subquery("bk") if len(rows) > 1 else rows[0].subquery("bk")
        b0, b1, bucket, bucket_from = bt.c.b0, bt.c.b1, bt.c.idx, [bt]

    if window.forecast_end_us and buckets is None:
        horizon = _least(dialect, iv.c.x_us, literal(window.forecast_end_us, BigInteger))
        proj = case((iv.c.open == 1, _greatest(dialect, horizon - literal(window.now_us, BigInteger), 0)), else_=0)
    else:
        proj = literal(0, BigInteger)
    cost_q = (
        select(
            iv.c.machine_id,
            *(iv.c[f"d_{name}"] for name in by),
            (bucket if bucket is not None else zero_bucket).label("bucket"),
            iv.c.price,
            iv.c.gpus,
            (_least(dialect, iv.c.e_us, b1) - _greatest(dialect, iv.c.s_us, b0)).label("cost_us"),
            literal(0, BigInteger).label("idle_us"),
            iv.c.open,
            proj.label("proj_us"),
            literal(0, Integer).label("kind"),
        )
        .select_from(iv, *bucket_from)
        .where(iv.c.s_us < b1, iv.c.e_us > b0)
    )

    idle = _idle_samples(dialect, start, by, team)
    idle_lo = _greatest(dialect, idle.c.from_us, b0)
    idle_hi = _least(dialect, idle.c.at_us, b1, literal(window.now_us, BigInteger))
    idle_q = (
        select(
            idle.c.machine_id,
            *(idle.c[f"d_{name}"] for name in by),
            (bucket if bucket is not None else zero_bucket).label("bucket"),
            idle.c.price,
            idle.c.gpus,
            literal(0, BigInteger).label("cost_us"),
            (idle_hi - idle_lo).label("idle_us"),
            literal(0, Integer).label("open"),
            literal(0, BigInteger).label("proj_us"),
            literal(1, Integer).label("kind"),
        )
        .select_from(idle, *bucket_from)
        .where(idle_hi > idle_lo)
    )
    return union_all(cost_q, idle_q).subquery("pc")


def aggregate(
    session: Session, by: Sequence[str], pc: Any, *, per_bucket: bool = False, count_machines: bool = False
) -> list[Any]:
    """Sum the pieces per group (and bucket): integer micro-dollars and GPU-microsecond parts.

    `pc` must come from pieces(..., by=by). No join here: the pieces carry their group keys.
    """
    keys = [pc.c[f"d_{name}"].label(name) for name in by]
    # No DISTINCT aggregate: it would force PostgreSQL to sort every piece instead of hashing.
    is_cost, is_idle, is_open = pc.c.kind == 0, pc.c.kind == 1, pc.c.open == 1
    cols = [
        *keys,
        func.sum(case((is_cost, micro_cost(pc.c.price, pc.c.cost_us)), else_=0)).label("cost_micro"),
        func.sum(pc.c.gpus * (pc.c.cost_us // US)).label("gpu_s"),
        func.sum(pc.c.gpus * (pc.c.cost_us % US)).label("gpu_us"),
        func.sum(case((is_idle, micro_cost(pc.c.price, pc.c.idle_us)), else_=0)).label("idle_micro"),
        func.sum(pc.c.gpus * (pc.c.idle_us // US)).label("idle_gpu_s"),
        func.sum(pc.c.gpus * (pc.c.idle_us % US)).label("idle_gpu_us"),
        func.sum(pc.c.open).label("running"),  # a machine has at most one open interval
        func.sum(case((is_open, pc.c.price), else_=0)).label("burn_micro"),
        func.sum(case((is_open, micro_cost(pc.c.price, pc.c.proj_us)), else_=0)).label("proj_micro"),
    ]
    if count_machines:  # SQLite has no hash aggregation to lose, and this beats machine_counts() there
        cols.append(func.count(func.distinct(case((is_cost, pc.c.machine_id), else_=None))).label("machines"))
    group: list[Any] = list(keys)
    if per_bucket:
        cols.insert(0, pc.c.bucket)
        group.insert(0, pc.c.bucket)
    query = select(*cols)
    if group:
        query = query.group_by(*group)
    return list(session.execute(query))


def machine_counts(
    session: Session, by: Sequence[str], start: datetime, end: datetime, team: str | None = None
) -> dict[tuple[str, ...], int]:
    """Machines with usage in [start, end) per group: one probe of the interval index per machine."""
    used = (
        select(UsageInterval.id)
        .where(
            UsageInterval.machine_id == Machine.id,
            UsageInterval.started_at < end,
            UsageInterval.ended_at.is_(None) | (UsageInterval.ended_at > start),
        )
        .exists()
    )
    keys = [DIMENSIONS[name] for name in by]
    query = select(*keys, func.count()).where(used).where(Machine.team == team if team else true())
    if keys:
        query = query.group_by(*keys)
    return {tuple(str(v) for v in row[:-1]): int(row[-1]) for row in session.execute(query)}
