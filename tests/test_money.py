"""The one money format (deepops_infra/money.py), its axis ticks, team colours, and the web page's
copy of the same rules (static/money.js, run by node) held to the same table of values."""

import json
import shutil
import subprocess
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest

from deepops_infra.costs.charts import IDLE, OTHER, PALETTE, team_colors
from deepops_infra.money import axis, exact, hours, money, nice_step, price_words, rate, ticks
from deepops_infra.views import show_rows

MONEY_JS = Path(__file__).parents[1] / "deepops_infra" / "server" / "static" / "money.js"

AMOUNTS = [
    ("0", "$0.00"),
    ("0.000001", "$0.000001"),
    ("0.0001", "$0.0001"),
    ("0.00042", "$0.00042"),
    ("0.001234", "$0.0012"),
    ("0.004", "$0.004"),
    ("0.0155", "$0.016"),
    ("0.05", "$0.05"),
    ("0.0999", "$0.10"),
    ("0.123", "$0.12"),
    ("0.5", "$0.50"),
    ("0.999999", "$1.00"),
    ("1", "$1.00"),
    ("1.005", "$1.01"),  # half up
    ("3.074999", "$3.07"),
    ("3.075", "$3.08"),
    ("80.5", "$80.50"),
    ("999.995", "$1,000.00"),
    ("1234.5", "$1,234.50"),
    ("12345.678", "$12,345.68"),
    ("999999.99", "$999,999.99"),
    ("1000000", "$1,000,000.00"),
    ("10000000", "$10,000,000.00"),
    ("-2.5", "-$2.50"),
    ("-0.004", "-$0.004"),
]
RATES = [
    ("0", "$0.00/h"),
    ("0.05", "$0.05/h"),
    ("0.050000", "$0.05/h"),
    ("0.0042", "$0.0042/h"),
    ("0.125", "$0.125/h"),
    ("2", "$2.00/h"),
    ("3.6725", "$3.6725/h"),
    ("98.32", "$98.32/h"),
    ("1500", "$1,500.00/h"),
    ("12345.000001", "$12,345.000001/h"),
]
# Chart maxima from a tenth of a cent's fraction to ten million dollars, with awkward mantissas.
MAXIMA = [f"{m}e{k}" for k in range(-4, 8) for m in ("1", "1.5", "2.5", "3", "4.2", "6", "7", "9.99")]


@pytest.mark.parametrize(("amount", "text"), AMOUNTS)
def test_money(amount: str, text: str) -> None:
    assert money(Decimal(amount)) == text
    assert money(float(amount)) == text  # JSON numbers read the same


@pytest.mark.parametrize(("per_hour", "text"), RATES)
def test_rate(per_hour: str, text: str) -> None:
    assert rate(Decimal(per_hour)) == text
    assert exact(per_hour) == text[:-2]


def test_nothing_is_never_none() -> None:
    assert money(None) == rate(None) == exact(None) == hours(None) == "-"
    assert hours(Decimal("12345.67")) == "12,345.7"


@pytest.mark.parametrize("vmax", MAXIMA)
def test_ticks_are_round_distinct_and_cover_the_data(vmax: str) -> None:
    values = ticks(vmax)
    step = nice_step(vmax)
    assert step.normalize().as_tuple().digits in ((1,), (2,), (5,))  # 1, 2 or 5 x 10^k
    assert values[0] == 0 and values[-1] >= Decimal(vmax) and values[-2] < Decimal(vmax)
    assert all(b - a == step for a, b in pairwise(values))
    assert 3 <= len(values) <= 7
    labels = [label for _, label in axis(vmax)]
    assert len(set(labels)) == len(labels), labels
    assert labels[0] == "$0" and all(label.startswith("$") for label in labels)


def test_a_report_of_a_few_cents_reads_right() -> None:
    """The old chart read `$1, $1, $0, $0, $0` for a few cents."""
    assert [label for _, label in axis("0.04")] == ["$0", "$0.01", "$0.02", "$0.03", "$0.04"]
    assert [label for _, label in axis("0.0003")] == ["$0", "$0.0001", "$0.0002", "$0.0003"]
    assert [label for _, label in axis("7500000")] == ["$0", "$2,000,000", "$4,000,000", "$6,000,000", "$8,000,000"]
    assert [label for _, label in axis(0)] == ["$0", "$1"]


def test_team_colours_are_stable_distinct_and_never_idle() -> None:
    teams = ["vision", "nlp", "speech", "ml", "cv", "robotics", "infra", "search"]
    colors = team_colors(teams)
    assert len(set(colors.values())) == len(teams)  # as many teams as colours: all distinct
    assert team_colors(reversed(teams)) == colors  # the order they come in does not matter
    assert IDLE not in PALETTE and OTHER not in PALETTE
    alone = team_colors(["vision"])
    assert alone["vision"] == team_colors(["vision", "zzz-other"])["vision"]  # a free slot keeps its colour
    many = team_colors([f"team{i}" for i in range(20)])
    assert set(many.values()) <= set(PALETTE)


def test_price_breakdown_in_words() -> None:
    cloud = {
        "per_hour": "3.073699",
        "instance_hour": "3.06",
        "market": "on-demand",
        "disk_gb": 100,
        "disk_hour": "0.013699",
    }
    assert price_words(cloud) == "on-demand instance $3.06/h + 100 GB disk $0.013699/h"
    onprem = {"per_hour": "4.1", "host_hour": "0.1", "gpu_hour": "2", "gpus": 2}
    assert price_words(onprem) == "host $0.10/h + 2 GPUs x $2.00/h"
    assert price_words({"per_hour": "1.5"}) == "" and price_words(None) == ""


def test_show_reads_as_words_without_none() -> None:
    data = {
        "owner": "alice",
        "team": "ml",
        "project": "default",
        "cloud": "onprem",
        "host": "gpu01",
        "image": "pytorch",
        "image_pin": None,
        "request": {"gpus": "A100:2"},
        "plan": {"gpu_indexes": [0, 1]},
        "price_per_hour": "4.1",
        "price": {"per_hour": "4.1", "host_hour": "0.1", "gpu_hour": "2", "gpus": 2},
        "cost_usd": "12345.678",
        "created_at": "2026-10-01T00:00:00Z",
        "ready_at": None,
        "expires_at": "2026-10-01T08:00:00Z",
        "ended_at": None,
        "provider_refs": {},
        "manifest": None,
    }
    rows = dict(show_rows(data))
    assert rows["price (frozen)"] == "$4.10/h (host $0.10/h + 2 GPUs x $2.00/h)"
    assert rows["cost so far"] == "$12,345.68"
    assert rows["gpus"] == "A100:2 (indexes 0, 1)" and rows["image"] == "pytorch"
    assert rows["created / ready"] == "2026-10-01T00:00:00Z / -"
    assert not any("None" in value or "{" in value for value in rows.values()), rows


def test_the_web_page_formats_money_the_same() -> None:
    """static/money.js (run by node) against money.py and charts.py over the same values."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs); the web test covers money.js in Chromium")
    teams = ["vision", "nlp", "speech", "ml", "cv", "ünïcode", "a", "b", "c", "d"]
    script = (
        f"const M = require({json.dumps(str(MONEY_JS))});"
        f"const amounts = {json.dumps([a for a, _ in AMOUNTS])}, rates = {json.dumps([r for r, _ in RATES])};"
        f"const maxima = {json.dumps(MAXIMA)}, teams = {json.dumps(teams)};"
        "console.log(JSON.stringify({money: amounts.map((a) => M.money(Number(a))),"
        " rate: rates.map((r) => M.rate(Number(r))),"
        " axis: maxima.map((v) => M.axis(Number(v)).map((t) => t[1])),"
        " colors: [M.teamColors(teams), M.teamColors(teams.slice(0, 3))],"
        " none: [M.money(null), M.rate(undefined)], idle: M.IDLE, other: M.OTHER, palette: M.PALETTE}));"
    )
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    js = json.loads(out)
    assert js["money"] == [money(Decimal(a)) for a, _ in AMOUNTS]
    assert js["rate"] == [rate(Decimal(r)) for r, _ in RATES]
    assert js["axis"] == [[label for _, label in axis(v)] for v in MAXIMA]
    assert js["colors"] == [team_colors(teams), team_colors(teams[:3])]
    assert js["none"] == ["-", "-"]
    assert (js["idle"], js["other"], tuple(js["palette"])) == (IDLE, OTHER, PALETTE)
