"""Cost reports from ledger fixtures with hand-computed amounts, on SQLite and PostgreSQL.

Every expected number below is worked out by hand in the comment next to it (price x hours).
"""

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from deepops_infra.costs.period import Period
from deepops_infra.costs.render import to_csv
from deepops_infra.costs.report import build
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine, UsageInterval, UtilizationSample


def T(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def add_machine(
    session: Any,
    mid: str,
    *,
    team: str,
    price: str,
    gpus: int,
    intervals: list[tuple[str, str | None]],
    owner: str = "ann",
    project: str = "detr",
    cloud: str = "onprem",
    accelerator: str | None = "A100",
    status: str = "terminated",
    expires: str = "2026-12-31T00:00:00",
    breakdown: dict[str, Any] | None = None,
    samples: list[tuple[str, int, bool | None]] = (),  # type: ignore[assignment]
) -> None:
    created = intervals[0][0] if intervals else "2026-10-01T00:00:00"
    ended = None if status in ("ready", "provisioning") else (intervals[-1][1] if intervals else created)
    session.add(
        Machine(
            id=mid,
            status=status,
            cloud=cloud,
            owner=owner,
            team=team,
            project=project,
            image="cpu-minimal",
            accelerator=accelerator if gpus else None,
            gpu_count=gpus,
            request={},
            plan={},
            provider_refs={},
            price_per_hour=Decimal(price),
            price_breakdown=breakdown or {"per_hour": price},
            created_at=T(created),
            ready_at=T(created),
            expires_at=T(expires),
            ended_at=T(ended) if ended else None,
        )
    )
    session.flush()
    for start, end in intervals:
        session.add(
            UsageInterval(
                machine_id=mid,
                started_at=T(start),
                ended_at=T(end) if end else None,
                price_per_hour=Decimal(price),
                gpu_count=gpus,
            )
        )
    for at, seconds, active in samples:
        session.add(
            UtilizationSample(machine_id=mid, at=T(at), interval_seconds=seconds, source="agent", active=active)
        )


def seed(ledger: Ledger) -> None:
    with ledger.write() as s:
        # Spans the month boundary: A100:2 on-prem at 0.10 + 2 x 1.00 = 2.10/h, Oct 31 22:00 -> Nov 1 03:30.
        # Idle: a 1 h sample ending Oct 31 23:30 (22:30-23:30), then one ending 00:30 covering since the
        # previous sample (23:30-00:30): October 1.5 h idle, November 0.5 h.
        add_machine(
            s,
            "m-span",
            team="vision",
            price="2.10",
            gpus=2,
            intervals=[("2026-10-31T22:00:00", "2026-11-01T03:30:00")],
            breakdown={"per_hour": "2.10", "host_hour": "0.10", "gpu_hour": "1.00", "gpus": 2},
            samples=[("2026-10-31T23:30:00", 3600, False), ("2026-11-01T00:30:00", 3600, False)],
        )
        # Spot at its launch price: H100:8 on AWS at 31.464/h, Oct 10 08:00 -> 10:15 (2.25 h).
        add_machine(
            s,
            "m-spot",
            team="nlp",
            owner="bob",
            project="llm",
            cloud="aws",
            accelerator="H100",
            price="31.464",
            gpus=8,
            intervals=[("2026-10-10T08:00:00", "2026-10-10T10:15:00")],
            breakdown={"per_hour": "31.464", "instance_type": "p5.48xlarge", "spot": True, "instance_hour": "31.464"},
        )
        # A failed launch: its resources existed 7.5 minutes, at 3.06/h.
        add_machine(
            s,
            "m-fail",
            team="nlp",
            owner="bob",
            project="llm",
            cloud="aws",
            price="3.06",
            gpus=1,
            status="failed",
            intervals=[("2026-10-05T12:00:00", "2026-10-05T12:07:30")],
        )
        # Failed before any resource existed: no usage interval, costs nothing, is not counted.
        add_machine(s, "m-req", team="nlp", price="3.06", gpus=1, status="failed", intervals=[])
        # On-prem host rates 0.20 + 4 x 1.80 = 7.40/h, Oct 15 00:00:00 -> 06:00:00.999999 (a time
        # SQLite's own clock would round to the next second). Idle: 00:30-01:00, 01:30-02:00, and
        # a sample at 02:10 that overlaps the previous one, so only 02:00-02:10 counts; 01:30's
        # sample is unreadable (active NULL), which counts as active.
        add_machine(
            s,
            "m-onprem",
            team="vision",
            owner="cem",
            accelerator="A100-80GB",
            price="7.40",
            gpus=4,
            intervals=[("2026-10-15T00:00:00", "2026-10-15T06:00:00.999999")],
            breakdown={"per_hour": "7.40", "host_hour": "0.2", "gpu_hour": "1.8", "gpus": 4},
            samples=[
                ("2026-10-15T01:00:00", 1800, False),
                ("2026-10-15T01:30:00", 1800, None),
                ("2026-10-15T02:00:00", 1800, False),
                ("2026-10-15T02:10:00", 1800, False),
                ("2026-10-15T02:40:00", 1800, True),
            ],
        )


NOW = T("2026-11-20T12:00:00")


def by_key(report: Any, key: str) -> dict[str, Any]:
    return {row.keys[key]: row for row in report.rows}


def test_october_by_team(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    report = build(ledger, Period.month("2026-10"), ["team"], NOW)
    rows = by_key(report, "team")
    vision, nlp = rows["vision"], rows["nlp"]
    # vision: m-span 2 h x 2.10 = 4.20; m-onprem 7.40 x 21600.999999 s / 3600 = 44.4 + 0.0020555535 -> 44.402056
    assert vision.cost == Decimal("48.602056")
    # GPU-hours: 2 x 2 h = 4; 4 x 6.000277777 h = 24.001111 -> 28.001111
    assert vision.gpu_hours == Decimal("28.001111")
    # idle: m-span 1.5 h x 2.10 = 3.15; m-onprem (1800 + 1800 + 600) s x 7.40 / 3600 = 8.633333
    assert vision.idle_cost == Decimal("11.783333")
    # idle GPU-hours: 1.5 h x 2 = 3; 4200 s x 4 / 3600 = 4.666667
    assert vision.idle_gpu_hours == Decimal("7.666667")
    assert vision.machines == 2 and vision.running == 0
    # nlp: spot 2.25 h x 31.464 = 70.794; failed launch 0.125 h x 3.06 = 0.3825
    assert nlp.cost == Decimal("71.176500")
    assert nlp.gpu_hours == Decimal("18.125000")  # 8 x 2.25 + 1 x 0.125
    assert nlp.idle_cost == 0 and nlp.machines == 2  # m-req never had resources
    assert report.total.cost == Decimal("119.778556")
    assert [r.keys["team"] for r in report.rows] == ["nlp", "vision"]  # most expensive first
    assert report.forecast_to is None  # a past month has nothing to forecast


def test_machine_spanning_months_is_split(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    oct_, nov = (
        by_key(build(ledger, Period.month(m), ["machine"], NOW), "machine")["m-span"] for m in ("2026-10", "2026-11")
    )
    assert (oct_.cost, nov.cost) == (Decimal("4.200000"), Decimal("7.350000"))  # 2 h and 3.5 h at 2.10
    assert (oct_.gpu_hours, nov.gpu_hours) == (Decimal(4), Decimal(7))
    assert (oct_.idle_cost, nov.idle_cost) == (Decimal("3.150000"), Decimal("1.050000"))
    with ledger.read() as s:
        whole = store.costs(s, ["m-span", "m-onprem"], NOW)
    assert oct_.cost + nov.cost == whole["m-span"]  # the split adds up to the machine's own cost line
    onprem = by_key(build(ledger, Period.month("2026-10"), ["machine"], NOW), "machine")["m-onprem"]
    assert onprem.cost == whole["m-onprem"]  # same rounding as the `deepops down` cost line


def test_since_until_clip_and_several_groups(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    # Oct 31 23:00 -> Nov 1 01:00 catches 2 h of m-span only: 4.20, of which idle 23:00-01:00 minus
    # nothing = 23:00-23:30 (first sample) + 23:30-00:30 + nothing after = 1.5 h -> 3.15
    period = Period.between("2026-10-31T23:00:00Z", "2026-11-01T01:00:00Z", NOW)
    report = build(ledger, period, ["team", "gpu", "cloud"], NOW)
    assert len(report.rows) == 1
    row = report.rows[0]
    assert row.keys == {"team": "vision", "gpu": "A100", "cloud": "onprem"}
    assert row.cost == Decimal("4.200000") and row.idle_cost == Decimal("3.150000")
    by_gpu = by_key(build(ledger, Period.month("2026-10"), ["gpu"], NOW), "gpu")
    assert set(by_gpu) == {"A100", "H100", "A100-80GB"}
    assert by_gpu["A100"].cost == Decimal("4.582500")  # m-span 4.20 + m-fail 0.3825


def test_running_machines_burn_rate_and_forecast(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with ledger.write() as s:
        # 2.50/h since Nov 10 00:00, expires Nov 25 00:00: at Nov 20 12:00 it has run 252 h = 630.00,
        # and will run 108 h more before its expiry = 270.00.
        add_machine(
            s,
            "m-run",
            team="vision",
            price="2.50",
            gpus=2,
            status="ready",
            intervals=[("2026-11-10T00:00:00", None)],
            expires="2026-11-25T00:00:00",
        )
        # 1.00/h since Nov 20 00:00 (12 h = 12.00), expires after the month: projected to Dec 1, 252 h.
        add_machine(
            s,
            "m-run2",
            team="vision",
            price="1.00",
            gpus=0,
            status="ready",
            intervals=[("2026-11-20T00:00:00", None)],
            expires="2026-12-05T00:00:00",
        )
    report = build(ledger, Period.month("2026-11"), ["team"], NOW)
    [row] = report.rows
    assert row.cost == Decimal("642.000000")
    assert row.running == 2 and row.burn_rate == Decimal("3.500000")
    assert report.forecast_to == T("2026-12-01T00:00:00")
    assert row.forecast == Decimal("1164.000000")  # 642 + 270 + 252
    assert row.gpu_hours == Decimal("504.000000")  # 252 h x 2 GPUs; the CPU machine adds none
    data = report.to_json()
    assert data["rows"][0]["burn_rate_per_hour"] == 3.5 and data["rows"][0]["forecast"] == 1164.0


def test_extending_ttl_changes_nothing_recorded(ledger_url: str, tmp_path: Any, monkeypatch: Any) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.lifecycle import extend

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text("policy:\n  default:\n    max_ttl: 400d\n")
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    ledger = Ledger(ledger_url)
    with ledger.write() as s:
        add_machine(
            s,
            "m-run",
            team="vision",
            price="2.50",
            gpus=2,
            status="ready",
            intervals=[("2026-11-10T00:00:00", None)],
            expires="2026-11-25T00:00:00",
        )
    before = build(ledger, Period.month("2026-11"), ["machine"], NOW).rows[0]
    with ledger.read() as s:
        intervals_before = [(i.started_at, i.ended_at, i.price_per_hour) for i in s.scalars(select(UsageInterval))]
    extend(Settings.from_env(), ledger, "m-run", __import__("datetime").timedelta(hours=2))
    after = build(ledger, Period.month("2026-11"), ["machine"], NOW).rows[0]
    with ledger.read() as s:
        intervals_after = [(i.started_at, i.ended_at, i.price_per_hour) for i in s.scalars(select(UsageInterval))]
        price = s.get(Machine, "m-run").price_per_hour
    assert intervals_after == intervals_before and price == Decimal("2.5")
    assert (after.cost, after.gpu_hours, after.burn_rate) == (before.cost, before.gpu_hours, before.burn_rate)
    assert before.cost == Decimal("630.000000")


def test_csv_and_json_outputs(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    report = build(ledger, Period.month("2026-10"), ["team", "project"], NOW)
    text = to_csv(report)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "team",
        "project",
        "cost",
        "gpu_hours",
        "idle_gpu_hours",
        "idle_cost",
        "machines",
        "running",
        "burn_rate_per_hour",
    ]
    assert rows[1] == ["nlp", "llm", "71.176500", "18.125000", "0.000000", "0.000000", "2", "0", "0.000000"]
    assert all(not any(c in cell for c in "$,") for row in rows[1:] for cell in row[2:])  # numbers without units
    assert len(rows) == 3  # one header row, one row per group, no total row to double-count
    data = json.loads(json.dumps(report.to_json()))
    assert data["total"]["cost"] == 119.778556 and data["currency"] == "USD"


def test_empty_period(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    report = build(ledger, Period.month("2025-01"), ["owner"], NOW)
    assert report.rows == [] and report.total.cost == 0


def test_cli_formats(deepops: Any, tmp_path: Any) -> None:
    seed(deepops.ledger())
    out = deepops.run("cost", "--by", "team,owner", "--month", "2026-10", "--format", "json", check=True)
    data = json.loads(out.stdout)
    assert {(r["team"], r["owner"]): r["cost"] for r in data["rows"]} == {
        ("nlp", "bob"): 71.1765,
        ("vision", "cem"): 44.402056,
        ("vision", "ann"): 4.2,
    }
    csv_file = tmp_path / "oct.csv"
    deepops.run("cost", "--by", "machine", "--month", "2026-10", "--format", "csv", "-o", str(csv_file), check=True)
    lines = csv_file.read_text().splitlines()
    assert lines[0].startswith("machine,name,owner,team,project,cost,") and len(lines) == 5  # whose machine
    table = deepops.run("cost", "--by", "team", "--month", "2026-10", check=True).stdout
    assert "$48.60" in table and "$71.18" in table and "TOTAL" in table and "$119.78" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--month", "2026-13"], "--month '2026-13': use YYYY-MM"),
        (["--by", "colour"], "--by 'colour': use one or more of owner, team, project, cloud, gpu, machine"),
        (["--month", "2026-10", "--since", "2026-10-01"], "--month cannot be combined with --since/--until"),
        (["--since", "2026-10-05", "--until", "2026-10-01"], "must be after --since"),
        (["--since", "yesterday"], "--since 'yesterday': use a date"),
        (["--format", "pdf"], "--format 'pdf': use one of table, csv, json, html"),
        (["-o", "/nonexistent/dir/x.csv"], "does not exist"),
    ],
)
def test_cli_bad_input(sqlite_deepops: Any, args: list[str], message: str) -> None:
    proc = sqlite_deepops.run("cost", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("deepops: error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_periods() -> None:
    december = Period.month("2026-12")
    assert (december.start, december.end) == (T("2026-12-01T00:00:00"), T("2027-01-01T00:00:00"))
    assert Period.month("2024-02").end == T("2024-03-01T00:00:00")
    assert Period.from_options(None, None, None, NOW) == Period.current_month(NOW)
    since = Period.between("2026-10-31", None, NOW)
    assert (since.start, since.end) == (T("2026-10-31T00:00:00"), NOW)
    offset = Period.between("2026-10-31T02:00:00+02:00", "2026-11-01", NOW)
    assert offset.start == T("2026-10-31T00:00:00")  # an offset is converted to UTC
    days = Period.between("2026-10-30T12:00Z", "2026-11-01T06:00Z", NOW).days()
    assert days == [
        (T("2026-10-30T12:00:00"), T("2026-10-31T00:00:00")),
        (T("2026-10-31T00:00:00"), T("2026-11-01T00:00:00")),
        (T("2026-11-01T00:00:00"), T("2026-11-01T06:00:00")),
    ]


def test_forecast_stops_at_expiry_already_past(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with ledger.write() as s:  # still running 12 h after its expiry (the reaper has not run): no projection
        add_machine(
            s,
            "m-late",
            team="ml",
            price="2",
            gpus=1,
            status="ready",
            intervals=[("2026-11-20T00:00:00", None)],
            expires="2026-11-20T00:00:00",
        )
    [row] = build(ledger, Period.month("2026-11"), ["team"], NOW).rows
    assert (row.cost, row.forecast, row.running, row.burn_rate) == (Decimal(24), Decimal(24), 1, Decimal(2))
