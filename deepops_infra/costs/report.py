"""Cost reports: what each group of machines cost in a period, with idle waste and forecasts."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from deepops_infra.costs import query
from deepops_infra.costs.period import Period, month_start, next_month
from deepops_infra.errors import UserError
from deepops_infra.ledger.db import Ledger

MICRO = Decimal("0.000001")
IDLE_MODES = ("separate", "share")
# What a `--by machine` row carries besides its ID, so that a reader knows whose machine it was.
MACHINE_LABELS = ("name", "owner", "team", "project")


def dollars_of(micro: int | None) -> Decimal:
    return (Decimal(int(micro or 0)) * MICRO).quantize(MICRO)


def hours_of(seconds: int | None, micros: int | None) -> Decimal:
    total_us = Decimal(int(seconds or 0)) * query.US + Decimal(int(micros or 0))
    return (total_us / Decimal(query.HOUR_US)).quantize(MICRO)


@dataclass
class Row:
    keys: dict[str, str]
    cost_micro: int = 0
    gpu_us: int = 0
    idle_micro: int = 0
    idle_gpu_us: int = 0
    machines: int = 0
    running: int = 0
    burn_micro: int = 0  # micro-dollars per hour of the machines running now
    proj_micro: int = 0

    @property
    def cost(self) -> Decimal:
        return dollars_of(self.cost_micro)

    @property
    def idle_cost(self) -> Decimal:
        return dollars_of(self.idle_micro)

    @property
    def gpu_hours(self) -> Decimal:
        return hours_of(0, self.gpu_us)

    @property
    def idle_gpu_hours(self) -> Decimal:
        return hours_of(0, self.idle_gpu_us)

    @property
    def burn_rate(self) -> Decimal:
        return dollars_of(self.burn_micro)

    @property
    def forecast(self) -> Decimal:
        return dollars_of(self.cost_micro + self.proj_micro)

    def add(self, other: "Row") -> None:
        for name in ("cost_micro", "gpu_us", "idle_micro", "idle_gpu_us", "machines", "running", "burn_micro"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.proj_micro += other.proj_micro


@dataclass
class Report:
    period: Period
    by: list[str]
    generated_at: datetime
    rows: list[Row]
    total: Row
    forecast_to: datetime | None  # end of the month running machines are projected to; None: past period
    series: list[tuple[datetime, dict[str, Decimal]]] = field(default_factory=list)  # per day, per team
    top_machines: list[dict[str, Any]] = field(default_factory=list)
    idle_by_team: list[Row] = field(default_factory=list)  # each team's own idle, whatever `idle` says
    labels: list[str] = field(default_factory=list)  # columns the rows carry besides `by` (MACHINE_LABELS)
    idle: str = "separate"  # IDLE_MODES: idle cost in the rows that idled, or shared (share_idle)
    budgets: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (team|project, name): monthly

    @property
    def columns(self) -> list[str]:
        """The key columns of every row: the groups, then their labels."""
        return [*self.by, *self.labels]

    def over_budget(self, row: Row) -> Decimal | None:
        """The monthly budget a row has reached, when the report is one month by team or by project."""
        if len(self.by) != 1 or self.by[0] not in ("team", "project"):
            return None
        budget = self.budgets.get((self.by[0], row.keys.get(self.by[0], "")))
        return budget if budget is not None and row.cost >= budget else None

    def to_json(self) -> dict[str, Any]:
        return {
            "period": {
                "start": self.period.start.isoformat(),
                "end": self.period.end.isoformat(),
                "label": self.period.label,
            },
            "generated_at": self.generated_at.isoformat(),
            "currency": "USD",
            "by": self.by,
            "labels": self.labels,
            "idle": self.idle,
            "forecast_to": self.forecast_to.isoformat() if self.forecast_to else None,
            "rows": [row_json(r, self.forecast_to is not None) for r in self.rows],
            "total": row_json(self.total, self.forecast_to is not None),
        }


def row_json(row: Row, forecast: bool) -> dict[str, Any]:
    data: dict[str, Any] = dict(row.keys)
    data |= {
        "cost": float(row.cost),
        "gpu_hours": float(row.gpu_hours),
        "idle_gpu_hours": float(row.idle_gpu_hours),
        "idle_cost": float(row.idle_cost),
        "machines": row.machines,
        "running": row.running,
        "burn_rate_per_hour": float(row.burn_rate),
    }
    if forecast:
        data["forecast"] = float(row.forecast)
    return data


def _row(keys: dict[str, str], r: Any) -> Row:
    return Row(
        keys=keys,
        cost_micro=int(r.cost_micro or 0),
        gpu_us=int(r.gpu_us or 0),
        idle_micro=int(r.idle_micro or 0),
        idle_gpu_us=int(r.idle_gpu_us or 0),
        machines=int(r.machines or 0),
        running=int(r.running or 0),
        burn_micro=int(r.burn_micro or 0),
        proj_micro=int(r.proj_micro or 0),
    )


def validate_idle(idle: str | None) -> str:
    if idle is None:
        return "separate"
    if idle not in IDLE_MODES:
        raise UserError(f"--idle {idle!r}: use separate (each row's own idle cost) or share (spread over all rows)")
    return idle


def share_idle(rows: list[Row]) -> None:
    """Spread the rows' idle cost over them in proportion to their active (non-idle) cost, as
    OpenCost's shareIdle does: each row's cost becomes its active cost plus its share, and its idle
    cost the share. Shares are whole micro-dollars (largest remainder), so the total is unchanged.
    Idle GPU-hours stay with the machines that idled. With no active cost at all nothing moves."""
    pool = sum(r.idle_micro for r in rows)
    active = [r.cost_micro - r.idle_micro for r in rows]
    base = sum(active)
    if not pool or base <= 0:
        return
    shares = [pool * a // base for a in active]
    left = pool - sum(shares)
    order = sorted(range(len(rows)), key=lambda i: (-(pool * active[i] % base), i))
    for i in order[:left]:
        shares[i] += 1
    for row, own_active, share in zip(rows, active, shares, strict=True):
        row.cost_micro = own_active + share
        row.idle_micro = share


def validate_by(by: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in by:
        for name in (part.strip() for part in item.split(",")):
            if name not in query.DIMENSIONS:
                raise UserError(f"--by {name!r}: use one or more of {', '.join(query.DIMENSIONS)}")
            if name not in out:
                out.append(name)
    return out


def _window(period: Period, now: datetime) -> tuple[query.Window, datetime | None]:
    # Running machines are projected only when the period reaches past now: to the end of this
    # month (or of the period, if earlier), and never past a machine's own expiry.
    forecast_to = None
    if period.end > now >= period.start:
        forecast_to = min(next_month(month_start(now)), period.end)
    window = query.Window(
        start_us=query.to_us(period.start),
        end_us=query.to_us(min(period.end, now) if period.end > now else period.end),
        now_us=query.to_us(now),
        forecast_end_us=query.to_us(forecast_to) if forecast_to else 0,
    )
    return window, forecast_to


def build(
    ledger: Ledger,
    period: Period,
    by: Sequence[str],
    now: datetime | None = None,
    *,
    details: bool = False,
    top: int = 10,
    idle: str = "separate",
) -> Report:
    """Aggregate the ledger for a period; `details` adds what the HTML report charts; `idle`:
    IDLE_MODES (see share_idle)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    by = list(by)
    labels = [name for name in MACHINE_LABELS if "machine" in by and name not in by]
    columns = [*by, *labels]
    window, forecast_to = _window(period, now)
    dialect = ledger.dialect
    with ledger.read() as session:
        result = query.aggregate(session, dialect, window, columns)
        rows = [_row({name: str(getattr(r, name)) for name in columns}, r) for r in result]
        total = Row(keys={})
        for row in rows:
            total.add(row)
        report = Report(period, by, now, rows, total, forecast_to, labels=labels, idle=validate_idle(idle))
        if details:
            _details(session, dialect, report, window, top)
    if report.idle == "share":
        share_idle(rows)
    rows.sort(key=lambda r: (-r.cost_micro, *r.keys.values()))
    return report


def _details(session: Any, dialect: str, report: Report, window: query.Window, top: int) -> None:
    period = report.period
    days = [d for d in period.days() if query.to_us(d[0]) < window.end_us]
    if days:
        origin = days[0][0].replace(hour=0, minute=0, second=0, microsecond=0)
        grid = query.Buckets(query.to_us(origin), 86_400 * query.US, len(days))
        per_day: dict[int, dict[str, Decimal]] = {}
        for r in query.aggregate(session, dialect, window, ["team"], buckets=grid):
            per_day.setdefault(int(r.bucket), {})[str(r.team)] = dollars_of(r.cost_micro)
        report.series = [(start, per_day.get(i, {})) for i, (start, _) in enumerate(days)]
    costliest = query.aggregate(session, dialect, window, ["machine"], top=top)
    chosen = [_row({"machine": str(r.machine)}, r) for r in costliest]
    if chosen:
        from sqlalchemy import select

        from deepops_infra.ledger.schema import Machine

        ids = [r.keys["machine"] for r in chosen]
        info = {
            m.id: m
            for m in session.execute(
                select(
                    Machine.id, Machine.owner, Machine.team, Machine.project, Machine.accelerator, Machine.gpu_count
                ).where(Machine.id.in_(ids))
            )
        }
        for r in chosen:
            m = info[r.keys["machine"]]
            gpus = f"{m.accelerator}:{m.gpu_count}" if m.gpu_count else "CPU"
            report.top_machines.append(
                {
                    "machine": m.id,
                    "owner": m.owner,
                    "team": m.team,
                    "project": m.project,
                    "gpus": gpus,
                    "cost": r.cost,
                    "idle_cost": r.idle_cost,
                    "running": r.running > 0,
                }
            )
    if report.by == ["team"]:
        report.idle_by_team = sorted((replace(r) for r in report.rows), key=lambda r: -r.idle_micro)
        return
    idle = [_row({"team": str(r.team)}, r) for r in query.aggregate(session, dialect, window, ["team"])]
    report.idle_by_team = sorted(idle, key=lambda r: -r.idle_micro)
