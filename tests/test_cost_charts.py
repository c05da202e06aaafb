"""The HTML report's charts at any scale, team colours, over-budget rows, empty periods; `--by machine`
labels; idle cost shared across teams (`--idle share`)."""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from deepops_infra.costs.charts import IDLE, team_colors
from deepops_infra.costs.html import CHAR_W, render_html, spend_over_time
from deepops_infra.costs.period import Period
from deepops_infra.costs.render import table_rows, to_csv
from deepops_infra.costs.report import Report, Row, build, share_idle
from deepops_infra.ledger.db import Ledger
from deepops_infra.money import axis
from tests.test_costs import NOW, seed

OCTOBER = Period.month("2026-10")


def report_of(daily: dict[str, Decimal], days: int = 10, idle: Decimal = Decimal(0)) -> Report:
    """A report of October with `daily` spend per team on each of `days` days (no ledger)."""
    micro = {team: int(amount * 1_000_000) for team, amount in daily.items()}
    rows = [
        Row(keys={"team": t}, cost_micro=m * days, idle_micro=int(idle * 1_000_000), machines=1)
        for t, m in micro.items()
    ]
    total = Row(keys={})
    for row in rows:
        total.add(row)
    start = OCTOBER.start
    series = [(start + timedelta(days=i), dict(daily)) for i in range(days)]
    top = [
        {
            "machine": f"m-{t}",
            "owner": "ann",
            "team": t,
            "project": "p",
            "gpus": "A100:1",
            "cost": r.cost,
            "idle_cost": r.idle_cost,
            "running": False,
        }
        for t, r in zip(micro, rows, strict=True)
    ]
    generated = datetime(2026, 11, 2, tzinfo=UTC)
    return Report(
        OCTOBER, ["team"], generated, rows, total, None, series=series, top_machines=top, idle_by_team=list(rows)
    )


def tick_labels(svg: str) -> list[tuple[float, str]]:
    return [(float(x), label) for x, label in re.findall(r'<text class="tick" x="([\d.]+)"[^>]*>([^<]*)</text>', svg)]


@pytest.mark.parametrize(
    "daily",
    [Decimal("0.001"), Decimal("0.03"), Decimal("4.2"), Decimal("730"), Decimal("65000"), Decimal("2500000")],
)
def test_daily_axis_is_round_distinct_and_unclipped(daily: Decimal) -> None:
    """Two teams a day, from a tenth of a cent to five million dollars a day."""
    svg = spend_over_time(report_of({"vision": daily, "nlp": daily}))
    labels = tick_labels(svg)
    assert [label for _, label in labels] == [label for _, label in axis(daily * 2)]
    assert len({label for _, label in labels}) == len(labels) >= 3
    for x, label in labels:  # right-aligned at x: the label's width fits left of it
        assert x - CHAR_W * len(label) >= 20, (x, label)
    assert "$0.00<" not in svg  # no amount reads as nothing


def test_a_few_cents_do_not_read_as_dollars() -> None:
    svg = spend_over_time(report_of({"vision": Decimal("0.01"), "nlp": Decimal("0.02")}))
    assert [label for _, label in tick_labels(svg)] == ["$0", "$0.01", "$0.02", "$0.03"]


def test_one_colour_per_team_and_idle_its_own() -> None:
    report = report_of({"vision": Decimal(5), "nlp": Decimal(3), "speech": Decimal(1)}, idle=Decimal(2))
    html = render_html(report)
    colors = team_colors(["vision", "nlp", "speech"])
    for chart in ("chart-spend", "chart-top", "chart-idle"):
        svg = html.split(f'id="{chart}"', 1)[1].split("</svg>", 1)[0]
        bars = re.findall(r'<rect class="bar( idle)?"[^>]*fill="(#[0-9a-f]+)"><title>([^<]*)</title>', svg)
        assert bars, chart
        for idle, fill, title in bars:
            team = next(t for t in colors if t in title)
            assert fill == (IDLE if idle else colors[team]), (chart, title, fill)
    assert IDLE not in colors.values()


def test_over_budget_rows_are_highlighted() -> None:
    report = report_of({"vision": Decimal(50), "nlp": Decimal(3)})  # 500 and 30 in the month
    report.budgets = {("team", "vision"): Decimal(400), ("team", "nlp"): Decimal(100)}
    summary = render_html(report).split('id="summary"', 1)[1].split("</table>", 1)[0]
    over = re.findall(r'<tr class="over"><td>(\w+)<span class="flag">([^<]*)</span>', summary)
    assert over == [("vision", "over its $400.00 budget")]
    assert summary.count('class="over"') == 1


def test_an_empty_period_says_so() -> None:
    empty = Report(OCTOBER, ["team"], datetime(2026, 11, 2, tzinfo=UTC), [], Row(keys={}), None, series=[])
    html = render_html(empty)
    assert "<svg" not in html
    assert "No spend in this period" in html and "No machine cost anything in this period." in html


def test_share_idle_by_active_cost() -> None:
    rows = [
        Row(keys={"team": "a"}, cost_micro=100, idle_micro=40),  # active 60
        Row(keys={"team": "b"}, cost_micro=30, idle_micro=0),  # active 30
        Row(keys={"team": "c"}, cost_micro=10, idle_micro=10),  # active 0: gets no share
    ]
    share_idle(rows)
    # pool 50 over active 60 : 30 : 0 -> 33.33, 16.67, 0 -> 33 + 17 (largest remainder) = 50
    assert [(r.cost_micro, r.idle_micro) for r in rows] == [(93, 33), (47, 17), (0, 0)]
    nothing_active = [Row(keys={"team": "a"}, cost_micro=5, idle_micro=5)]
    share_idle(nothing_active)
    assert nothing_active[0].cost_micro == 5 and nothing_active[0].idle_micro == 5


def test_share_idle_report(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    separate = build(ledger, OCTOBER, ["team"], NOW)
    shared = build(ledger, OCTOBER, ["team"], NOW, idle="share", details=True)
    # test_costs: vision 48.602056 of which idle 11.783333 (active 36.818723), nlp 71.1765, no idle.
    # The 11.783333 are shared 36.818723 : 71.1765 -> 4.017282 and 7.766050 (+1 largest remainder).
    got = {r.keys["team"]: (r.cost, r.idle_cost) for r in shared.rows}
    assert got == {
        "vision": (Decimal("40.836005"), Decimal("4.017282")),
        "nlp": (Decimal("78.942551"), Decimal("7.766051")),
    }
    assert shared.total.cost == separate.total.cost == Decimal("119.778556")
    assert shared.total.idle_cost == separate.total.idle_cost
    assert {r.keys["team"]: r.idle_cost for r in shared.idle_by_team} == {
        "vision": Decimal("11.783333"),  # the idle chart keeps each team's own idle time
        "nlp": Decimal(0),
    }
    assert shared.to_json()["idle"] == "share" and separate.to_json()["idle"] == "separate"
    html = render_html(shared)
    assert "shareIdle" in html and "Shared idle cost" in html and "$11.78" in html


def test_by_machine_rows_say_whose(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    report = build(ledger, OCTOBER, ["machine"], NOW)
    assert report.columns == ["machine", "name", "owner", "team", "project"]
    data = report.to_json()
    assert all({"machine", "name", "owner", "team", "project"} <= set(row) for row in data["rows"])
    lines = to_csv(report).splitlines()
    assert lines[0].startswith("machine,name,owner,team,project,cost,")
    columns, rows = table_rows(report)
    assert columns[:5] == ["MACHINE", "NAME", "OWNER", "TEAM", "PROJECT"] and rows[-1][0] == "TOTAL"
    json.dumps(data)  # plain numbers and strings
    assert all(isinstance(row["cost"], float) for row in data["rows"])


def test_cli_idle_option(deepops: Any) -> None:
    seed(deepops.ledger())
    out = deepops.run("cost", "--month", "2026-10", "--idle", "share", "--format", "json", check=True)
    data = json.loads(out.stdout)
    assert data["idle"] == "share" and {r["team"]: r["cost"] for r in data["rows"]} == {
        "vision": 40.836005,
        "nlp": 78.942551,
    }
    table = deepops.run("cost", "--month", "2026-10", "--idle", "share", check=True).stdout
    assert "idle cost shared" in table and "$78.94" in table
    bad = deepops.run("cost", "--idle", "spread")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--idle 'spread': use separate" in bad.stderr
