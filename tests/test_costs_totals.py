"""The integer usage columns, each ended machine's closed totals and the daily series, on SQLite
and PostgreSQL: a report reads a machine's totals when its whole usage lies in the period and adds
up its intervals otherwise, with the same numbers either way; migration 0005 fills both for a
ledger that had data before it."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, select, text

from deepops_infra import pricing
from deepops_infra.costs import query
from deepops_infra.costs.period import Period
from deepops_infra.costs.report import build
from deepops_infra.ledger import HEAD_REVISION, store
from deepops_infra.ledger.db import MIGRATIONS, Ledger, current_revision, make_engine
from deepops_infra.ledger.schema import Machine, UsageInterval
from tests.test_costs import NOW, T, add_machine, seed

PERIODS = [
    (Period.month("2026-10"), ["team"]),
    (Period.month("2026-10"), ["machine"]),
    (Period.month("2026-11"), ["owner", "cloud"]),
    (Period.between("2026-10-10T09:00:00", "2026-10-15T03:00:00", NOW), ["project", "gpu"]),
    (Period.between("2026-10-01", "2026-11-20T12:00:00", NOW), []),
]


def report_json(ledger: Ledger, period: Period, by: list[str]) -> dict[str, Any]:
    return build(ledger, period, by, NOW).to_json() | {"generated_at": None}


def close_all(ledger: Ledger) -> int:
    with ledger.write() as session:
        return query.finalize(session, ledger.dialect, None, pricing.epoch_us(NOW))


def test_cost_micro_is_the_decimal_rule() -> None:
    """The integer rule equals price x hours rounded half-up to the micro-dollar, at the edges too."""
    cases = [
        ("2.10", 5.5 * 3600 * 10**6),  # 11.55 exactly
        ("0.000001", 1_800_000_000),  # half a micro-dollar rounds up
        ("0.000001", 1_799_999_999),  # just under rounds down
        ("31.464", 8100 * 10**6 + 1),
        ("7.40", 21_600_999_999),
        ("999999.999999", 31 * 86400 * 10**6),  # a month at the largest price the ledger stores
    ]
    for price, micros in cases:
        start = datetime(2026, 10, 1, tzinfo=UTC)
        expected = (Decimal(price) * Decimal(int(micros)) / Decimal(3_600_000_000)).quantize(
            Decimal("0.000001"), rounding="ROUND_HALF_UP"
        )
        assert pricing.cost(Decimal(price), start, start + timedelta(microseconds=int(micros))) == expected
    assert pricing.cost(Decimal("1"), T("2026-10-02T00:00:00"), T("2026-10-01T00:00:00")) == 0


def test_integer_columns_follow_every_write(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with ledger.write() as s:
        add_machine(s, "m-open", team="t", price="1.25", gpus=1, status="ready", intervals=[])
        s.flush()
        machine = s.get(Machine, "m-open")
        store.open_usage(s, machine, T("2026-10-01T10:00:00.250000"))
    with ledger.read() as s:
        [iv] = s.scalars(select(UsageInterval)).all()
        assert (iv.started_us, iv.ended_us, iv.price_micro, iv.cost_micro) == (
            pricing.epoch_us(T("2026-10-01T10:00:00.250000")),
            None,
            1_250_000,
            None,
        )
        assert s.get(Machine, "m-open").usage_from_us == iv.started_us
    with ledger.write() as s:
        machine = s.get(Machine, "m-open")
        store.end_machine(s, machine, T("2026-10-01T12:00:00.250000"))
    with ledger.read() as s:
        [iv] = s.scalars(select(UsageInterval)).all()
        machine = s.get(Machine, "m-open")
        assert iv.ended_us - iv.started_us == 2 * 3600 * 10**6
        assert iv.cost_micro == 2_500_000  # 1.25/h x 2 h
        assert (machine.usage_to_us, machine.total_cost_micro, machine.total_gpu_us) == (
            iv.ended_us,
            2_500_000,
            2 * 3600 * 10**6,
        )
        assert machine.total_idle_micro == 0


def test_closed_totals_give_the_same_reports(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    with ledger.write() as s:  # and one still running: never closed, always added up
        add_machine(
            s, "m-run", team="nlp", price="1.00", gpus=1, status="ready", intervals=[("2026-11-19T12:00:00", None)]
        )
    before = [report_json(ledger, period, by) for period, by in PERIODS]
    assert close_all(ledger) == 4  # m-span, m-spot, m-fail, m-onprem (m-req never had resources)
    assert [report_json(ledger, period, by) for period, by in PERIODS] == before

    with ledger.read() as s:
        onprem = s.get(Machine, "m-onprem")
        # 7.40/h x 6 h 0.999999 s, and its idle 30 + 30 + 10 minutes at the same price (see test_costs)
        assert onprem.total_cost_micro == 44_402_056  # 44.4020555...: half-up
        assert onprem.total_idle_micro == pricing.cost_micro(7_400_000, 70 * 60 * 10**6)
        assert s.get(Machine, "m-run").usage_to_us is None

    # October's machines wholly inside the month are read from their totals, not their intervals:
    # with the intervals gone the October report does not change; November (which m-span crosses
    # into) still adds up m-span's intervals.
    with ledger.write() as s:
        s.execute(delete(UsageInterval).where(UsageInterval.machine_id.in_(["m-spot", "m-fail", "m-onprem"])))
    assert report_json(ledger, *PERIODS[0]) == before[0]
    assert report_json(ledger, *PERIODS[2]) == before[2]


def test_daily_series_splits_at_midnight(ledger_url: str) -> None:
    """2.40/h, 1 GPU: Oct 3 20:00 -> Oct 6 02:00 is 4 h, 24 h, 24 h and 2 h; Oct 8 10:00-11:30 is one
    piece; Oct 9 23:00 -> Oct 10 01:00 is 1 h on each day."""
    ledger = Ledger(ledger_url)
    with ledger.write() as s:
        add_machine(
            s, "m-long", team="a", price="2.40", gpus=1, intervals=[("2026-10-03T20:00:00", "2026-10-06T02:00:00")]
        )
        add_machine(
            s, "m-short", team="a", price="2.40", gpus=1, intervals=[("2026-10-08T10:00:00", "2026-10-08T11:30:00")]
        )
        add_machine(
            s, "m-night", team="b", price="2.40", gpus=1, intervals=[("2026-10-09T23:00:00", "2026-10-10T01:00:00")]
        )
    close_all(ledger)
    report = build(ledger, Period.month("2026-10"), ["team"], NOW, details=True)
    days = {start.day: amounts for start, amounts in report.series if amounts}
    assert days == {
        3: {"a": Decimal("9.60")},
        4: {"a": Decimal("57.60")},
        5: {"a": Decimal("57.60")},
        6: {"a": Decimal("4.80")},
        8: {"a": Decimal("3.60")},
        9: {"b": Decimal("2.40")},
        10: {"b": Decimal("2.40")},
    }
    assert len(report.series) == 31
    assert sum(sum(a.values()) for _, a in report.series) == report.total.cost == Decimal("138.00")
    # A period starting and ending inside a day clips the first and last buckets.
    part = build(ledger, Period.between("2026-10-03T22:00:00", "2026-10-06T01:00:00", NOW), ["team"], NOW, details=True)
    assert [(start.day, amounts) for start, amounts in part.series] == [
        (3, {"a": Decimal("4.80")}),
        (4, {"a": Decimal("57.60")}),
        (5, {"a": Decimal("57.60")}),
        (6, {"a": Decimal("2.40")}),
    ]
    assert [m["machine"] for m in report.top_machines] == ["m-long", "m-night", "m-short"]


def test_a_ledger_with_data_migrates_to_0005(ledger_url: str) -> None:
    _migrate(ledger_url, "0004")
    engine = make_engine(ledger_url)
    machine_sql = (
        "INSERT INTO machines (id, status, cloud, owner, team, project, image, gpu_count, request, plan, "
        "provider_refs, price_per_hour, price_breakdown, created_at, expires_at, ended_at) VALUES "
        "(:id, :status, 'onprem', 'ada', 'ml', 'p', 'cpu-minimal', 2, '{}', '{}', '{}', 3.061, '{}', "
        "'2026-10-01 08:00:00', '2026-10-02 08:00:00', :ended)"
    )
    interval_sql = (
        "INSERT INTO usage_intervals (machine_id, started_at, ended_at, price_per_hour, gpu_count) "
        "VALUES (:id, :start, :end, 3.061, 2)"
    )
    with engine.connect() as conn, conn.begin():
        conn.execute(text(machine_sql), {"id": "m-ended", "status": "terminated", "ended": "2026-10-01 10:30:00.5"})
        conn.execute(text(machine_sql), {"id": "m-live", "status": "ready", "ended": None})
        for mid, start, end in [
            ("m-ended", "2026-10-01 08:00:00", "2026-10-01 09:00:00.25"),
            ("m-ended", "2026-10-01 09:30:00", "2026-10-01 10:30:00.5"),
            ("m-live", "2026-10-01 08:00:00.000001", None),
        ]:
            conn.execute(text(interval_sql), {"id": mid, "start": start, "end": end})
    engine.dispose()

    ledger = Ledger(ledger_url)  # opening migrates to the head
    assert current_revision(ledger.engine) == HEAD_REVISION
    with ledger.read() as s:
        rows = {(iv.machine_id, iv.started_us): iv for iv in s.scalars(select(UsageInterval))}
        first = rows[("m-ended", pricing.epoch_us(T("2026-10-01T08:00:00")))]
        assert first.ended_us == pricing.epoch_us(T("2026-10-01T09:00:00.250000"))
        assert first.price_micro == 3_061_000
        assert first.cost_micro == pricing.cost_micro(3_061_000, 3600_250_000)
        live = rows[("m-live", pricing.epoch_us(T("2026-10-01T08:00:00.000001")))]
        assert (live.ended_us, live.cost_micro) == (None, None)
        ended = s.get(Machine, "m-ended")
        assert ended.usage_from_us == pricing.epoch_us(T("2026-10-01T08:00:00"))
        assert ended.usage_to_us == pricing.epoch_us(T("2026-10-01T10:30:00.500000"))
        assert ended.total_cost_micro == pricing.cost_micro(3_061_000, 3600_250_000) + pricing.cost_micro(
            3_061_000, 3600_500_000
        )
        assert ended.total_gpu_us == 2 * (3600_250_000 + 3600_500_000)
        assert s.get(Machine, "m-live").usage_to_us is None
    # What the ORM writes from now on agrees with what the migration computed.
    with ledger.write() as s:
        machine = s.get(Machine, "m-live")
        store.end_machine(s, machine, T("2026-10-01T12:00:00.000001"))
    report = build(ledger, Period.month("2026-10"), ["machine"], NOW)
    costs = {row.keys["machine"]: row.cost for row in report.rows}
    assert costs == {
        "m-ended": pricing.cost(Decimal("3.061"), T("2026-10-01T08:00:00"), T("2026-10-01T09:00:00.25"))
        + pricing.cost(Decimal("3.061"), T("2026-10-01T09:30:00"), T("2026-10-01T10:30:00.5")),
        "m-live": Decimal("12.244000"),  # 3.061/h x 4 h
    }


def _migrate(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


@pytest.mark.parametrize("by", [["team"], ["machine"]])
def test_top_limits_to_the_costliest_groups(ledger_url: str, by: list[str]) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    report = build(ledger, Period.month("2026-10"), by, NOW)
    window = query.Window(
        query.to_us(T("2026-10-01T00:00:00")), query.to_us(T("2026-11-01T00:00:00")), query.to_us(NOW), 0
    )
    with ledger.read() as s:
        top = query.aggregate(s, ledger.dialect, window, by, top=2)
    assert [int(r.cost_micro) for r in top] == [r.cost_micro for r in report.rows[:2]]
