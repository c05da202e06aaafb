"""Cost reports over a ledger of several months, on SQLite and PostgreSQL: machines every month
(some crossing into the next, one spanning months, one still running) give each month's report,
each day of a month's series and a team's spend equal to sums made here interval by interval,
whichever closed machines the report finds by their length and which by their start; SQLite reads
the ledger by index searches, not whole tables; migration 0006 adds its indexes to a ledger that
has data, and goes back."""

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from deepops_infra import pricing
from deepops_infra.costs import query
from deepops_infra.costs.budgets import month_spend
from deepops_infra.costs.period import Period, next_month
from deepops_infra.costs.report import build, dollars_of
from deepops_infra.ledger import HEAD_REVISION, store
from deepops_infra.ledger.db import Ledger, current_revision, make_engine
from deepops_infra.ledger.schema import Machine
from tests.test_costs import NOW, T, add_machine
from tests.test_costs_totals import close_all
from tests.test_reaper_orphan_trace import _migrate

MONTHS = ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]
HOUR = timedelta(hours=1)
Interval = tuple[str, str | None]  # an interval without an end is still open at NOW


def _iso(at: datetime) -> str:
    return at.isoformat()


def monthly(month: str) -> list[tuple[str, str, str, int, list[Interval]]]:
    """(id, team, price per hour, GPUs, intervals): two machines inside the month, one crossing
    into the next (ending a few microseconds past a whole hour, so that rounding shows)."""
    start = T(f"{month}-01T00:00:00")
    end = next_month(start)

    def day(days: int, hours: float) -> str:
        return _iso(start + timedelta(days=days, hours=hours))

    return [
        (f"{month}-a", "vision", "2.10", 2, [(day(2, 8), day(2, 14.5)), (day(9, 9), day(10, 9.25))]),
        (f"{month}-b", "nlp", "31.464", 8, [(day(14, 22), day(15, 1.25))]),
        (
            f"{month}-edge",
            "nlp",
            "3.06",
            1,
            [(_iso(end - 4 * HOUR), _iso(end + 4.5 * HOUR + timedelta(microseconds=7)))],
        ),
    ]


FLEET = [
    *(machine for month in MONTHS[:-1] for machine in monthly(month)),
    # Longer than any other: from July to September, with a gap.
    (
        "m-long",
        "vision",
        "1.00",
        1,
        [("2026-07-20T00:00:00", "2026-08-05T06:00:00"), ("2026-08-06T00:00", "2026-09-10")],
    ),
]
RUNNING = ("m-run", "nlp", "2.40", 1, [("2026-10-28T06:00:00", None)])
# Idle 3 h up to Nov 1 01:00 on October's edge machine: 2 h in October, 1 h in November, at 3.06/h.
SAMPLE = ("2026-10-edge", "2026-11-01T01:00:00", 3 * 3600)


@dataclass
class Sums:
    cost_micro: int = 0
    gpu_us: int = 0
    machines: int = 0
    running: int = 0


def expected(start: datetime, end: datetime) -> dict[str, Sums]:
    """Per team: each interval clipped to [start, min(end, NOW)) and priced by the one rounding
    rule (pricing.cost_micro), a machine counted when a piece of it is left."""
    end = min(end, NOW)
    teams: dict[str, Sums] = defaultdict(Sums)
    for _, team, price, gpus, intervals in [*FLEET, RUNNING]:
        pieces = []
        for started, ended in intervals:
            lo, hi = max(T(started), start), min(T(ended) if ended else NOW, end)
            if hi > lo:
                pieces.append((pricing.epoch_us(hi) - pricing.epoch_us(lo), ended is None))
        if pieces:
            sums = teams[team]
            sums.machines += 1
            sums.running += any(still_open for _, still_open in pieces)
            for duration, _ in pieces:
                sums.cost_micro += pricing.cost_micro(pricing.price_micro(Decimal(price)), duration)
                sums.gpu_us += gpus * duration
    return dict(teams)


def seed(session: Session) -> None:
    """FLEET, its sample, and RUNNING opened as the ledger opens usage (store.open_usage)."""
    for mid, team, price, gpus, intervals in FLEET:
        samples = [(SAMPLE[1], SAMPLE[2], False)] if mid == SAMPLE[0] else []
        add_machine(session, mid, team=team, price=price, gpus=gpus, intervals=intervals, samples=samples)
    mid, team, price, gpus, [(started, _)] = RUNNING
    add_machine(session, mid, team=team, price=price, gpus=gpus, status="ready", intervals=[])
    session.flush()
    store.open_usage(session, session.get(Machine, mid), T(started))


def long_ledger(url: str) -> Ledger:
    ledger = Ledger(url)
    with ledger.write() as session:
        seed(session)
    close_all(ledger)  # what each machine's end does: its closed totals
    return ledger


def team_rows(ledger: Ledger, period: Period) -> dict[str, Sums]:
    report = build(ledger, period, ["team"], NOW)
    return {r.keys["team"]: Sums(r.cost_micro, r.gpu_us, r.machines, r.running) for r in report.rows}


# LONGEST 1: every closed machine is found by its start (reach is the longest one's length);
# 3: m-long by its length, the others by their start; the default: all by their length here.
@pytest.mark.parametrize("longest", [1, 3, query.LONGEST])
def test_each_month_adds_up_interval_by_interval(ledger_url: str, monkeypatch: Any, longest: int) -> None:
    monkeypatch.setattr(query, "LONGEST", longest)
    ledger = long_ledger(ledger_url)
    for month in MONTHS:
        period = Period.month(month)
        assert team_rows(ledger, period) == expected(period.start, period.end), month
    # The machines wholly inside a month are read from their closed totals: the same numbers.
    october = Period.month("2026-10")
    assert expected(october.start, october.end) == {  # worked out by hand, to check `expected` itself
        # 2026-10-a: 6.5 h + 24.25 h at 2.10 = 64.575, 2 GPUs: 61.5 GPU-hours
        "vision": Sums(cost_micro=64_575_000, gpu_us=221_400_000_000, machines=1),
        # 2026-10-b: 31.464 x 3.25 h = 102.258 (8 GPUs: 26 GPU-hours); September's edge machine
        # 4.5 h + 7 us at 3.06 = 13.77 (the 7 us round away); October's 4 h = 12.24; m-run
        # Oct 28 06:00 to Nov 1, 90 h x 2.40 = 216: 344.268, 124.5 GPU-hours + 7 us
        "nlp": Sums(cost_micro=344_268_000, gpu_us=448_200_000_007, machines=4, running=1),
    }
    idle = {
        (month, row.keys["team"]): row.idle_micro
        for month in MONTHS
        for row in build(ledger, Period.month(month), ["team"], NOW).rows
        if row.idle_micro
    }
    assert idle == {("2026-10", "nlp"): 6_120_000, ("2026-11", "nlp"): 3_060_000}  # 2 h and 1 h at 3.06


@pytest.mark.parametrize("longest", [1, 3])
def test_days_of_months_a_day_and_a_teams_spend(ledger_url: str, monkeypatch: Any, longest: int) -> None:
    monkeypatch.setattr(query, "LONGEST", longest)
    ledger = long_ledger(ledger_url)
    for month in ("2026-08", "2026-10"):  # m-long's intervals span many days of August
        report = build(ledger, Period.month(month), ["team"], NOW, details=True)
        assert len(report.series) == 31
        for day, amounts in report.series:
            want = expected(day, day + timedelta(days=1))
            assert amounts == {team: dollars_of(sums.cost_micro) for team, sums in want.items()}, day
    day = Period.between("2026-10-31T12:00:00", "2026-11-01T02:00:00", NOW)
    assert team_rows(ledger, day) == expected(day.start, day.end)
    october = query.Window(
        pricing.epoch_us(T("2026-10-01")), pricing.epoch_us(T("2026-11-01")), pricing.epoch_us(NOW), 0
    )
    with ledger.read() as session:
        assert query.team_spend(session, ledger.dialect, october, "nlp") == 344_268_000
        # The budget refusal rule: this month so far.
        assert month_spend(session, ledger.dialect, "nlp", NOW) == dollars_of(
            expected(T("2026-11-01"), NOW)["nlp"].cost_micro
        )


def test_sqlite_reads_the_ledger_by_index_searches(tmp_path: Any) -> None:
    """Every statement of an HTML report (totals, daily series, costliest machines, idle per team)
    searches machines, intervals and samples through an index. The walks of a whole index allowed
    are bounded: the LONGEST longest machines (query.reach_us stops there) and the partial index
    of the machines without closed totals."""
    ledger = long_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    statements: list[tuple[str, Any]] = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters))

    build(ledger, Period.month("2026-10"), ["project"], NOW, details=True)
    event.remove(ledger.engine, "before_cursor_execute", keep)
    selects = [(statement, parameters) for statement, parameters in statements if statement.startswith("SELECT")]
    assert len(selects) >= 4
    scans = []
    with ledger.engine.connect() as conn:
        for statement, parameters in selects:
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters):
                step = row[3]
                if re.match(r"SCAN (machines|usage_intervals|utilization_samples)\b", step):
                    scans.append(step)
    bounded = {
        "SCAN machines USING COVERING INDEX ix_machines_usage_length",
        "SCAN machines USING INDEX ix_machines_unclosed",
    }
    assert set(scans) <= bounded


MIGRATION_0006 = {"ix_machines_usage", "ix_machines_usage_length", "ix_machines_unclosed"}


def machine_indexes(url: str) -> set[str]:
    engine = make_engine(url)
    sql = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'machines'"
        if engine.dialect.name == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'machines'"
    )
    with engine.connect() as conn:
        names = set(conn.scalars(text(sql)))
    engine.dispose()
    return names


def test_a_ledger_with_data_migrates_to_0006_and_back(ledger_url: str) -> None:
    _migrate(ledger_url, "0005")
    engine = make_engine(ledger_url)
    with Session(engine) as session, session.begin():  # the columns are those of 0005
        seed(session)
        assert query.finalize(session, engine.dialect.name, None, pricing.epoch_us(NOW)) == len(FLEET)
    engine.dispose()
    assert not machine_indexes(ledger_url) & MIGRATION_0006

    ledger = Ledger(ledger_url)  # opening migrates to the head
    assert current_revision(ledger.engine) == HEAD_REVISION
    assert MIGRATION_0006 | {index.name for index in Machine.__table__.indexes} <= machine_indexes(ledger_url)
    for month in ("2026-08", "2026-10", "2026-11"):
        period = Period.month(month)
        assert team_rows(ledger, period) == expected(period.start, period.end), month
    ledger.close()

    _migrate(ledger_url, "0005", down=True)  # and back: the indexes go, the data stays
    assert not machine_indexes(ledger_url) & MIGRATION_0006
    ledger = Ledger(ledger_url)
    with ledger.read() as session:
        assert session.scalar(select(func.count()).select_from(Machine)) == len(FLEET) + 1
    assert machine_indexes(ledger_url) >= MIGRATION_0006
