"""Budgets: spend against monthly budgets, alerts once per threshold, refusal of new machines."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from deepops_infra.config import Settings, parse_config
from deepops_infra.costs import budgets
from deepops_infra.costs.period import Period
from deepops_infra.errors import PolicyError
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine, Notification
from deepops_infra.yamlfile import FileError, load_yaml
from tests.test_costs import NOW, add_machine, seed


def config_of(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return parse_config(load_yaml(path), path)


def test_parse_budgets(tmp_path: Path) -> None:
    config = config_of(
        tmp_path,
        "budgets:\n  thresholds: [80, 50]\n  refuse_over_budget: true\n"
        "  teams:\n    vision: 100\n    nlp: {monthly: 80.5, refuse_over_budget: false}\n"
        "  projects:\n    llm: 60\n",
    )
    parsed = budgets.load(config)
    assert parsed.thresholds == (50, 80)
    assert parsed.for_team("vision") == budgets.Budget("team", "vision", Decimal(100), True)
    assert parsed.for_team("nlp") == budgets.Budget("team", "nlp", Decimal("80.5"), False)
    assert budgets.load(config_of(tmp_path, "defaults: {team: a}\n")).thresholds == (50, 80, 100)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("budgets:\n  teams:\n    vision: -5\n", 3, "budgets.teams.vision must be a positive amount"),
        ("budgets:\n  teams:\n    vision: lots\n", 3, "must be a positive amount"),
        ("budgets:\n  thresholds: [50, eighty]\n", 2, "budgets.thresholds must be a list of percents"),
        ("budgets:\n  monthly: 5\n", 2, "unknown budgets setting 'monthly'"),
        ("budgets:\n  teams:\n    vision: {amount: 5}\n", 3, "give `monthly:`"),
        ("budgets:\n  teams: [vision]\n", 2, "budgets.teams must map names to monthly amounts"),
    ],
)
def test_bad_budgets_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(FileError) as info:
        budgets.load(config_of(tmp_path, text))
    assert message in str(info.value) and f"config.yaml:{line}" in str(info.value)


def test_status_against_budgets(tmp_path: Path, ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    seed(ledger)
    cfg = budgets.load(
        config_of(
            tmp_path, "budgets:\n  teams:\n    vision: 100\n    nlp: 70\n    idle: 10\n  projects:\n    llm: 200\n"
        )
    )
    got = {(s.kind, s.name): s for s in budgets.status(ledger, cfg, Period.month("2026-10"), NOW)}
    vision, nlp, idle, llm = got["team", "vision"], got["team", "nlp"], got["team", "idle"], got["project", "llm"]
    assert (vision.spent, vision.percent, vision.crossed, vision.state) == (
        Decimal("48.602056"),
        Decimal("48.6"),
        None,
        "ok",
    )
    assert (nlp.spent, nlp.crossed, nlp.state) == (Decimal("71.176500"), 100, "over budget")  # 101.7% of 70
    assert (idle.spent, idle.state) == (Decimal(0), "ok")  # a budgeted team without machines
    assert (llm.spent, llm.percent, llm.crossed) == (Decimal("71.176500"), Decimal("35.6"), None)


def test_alerts_fire_once_per_threshold(tmp_path: Path, monkeypatch: Any, webhook: Any, ledger_url: str) -> None:
    url, received = webhook
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(f"notify:\n  webhook_url: {url}\nbudgets:\n  teams:\n    nlp: 100\n")
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    monkeypatch.delenv("DEEPOPS_WEBHOOK_URL", raising=False)
    settings, ledger = Settings.from_env(), Ledger(ledger_url)
    cfg = budgets.load(settings.config)
    seed(ledger)  # nlp spent 71.1765 of 100 in October: past 50%
    october = Period.month("2026-10")

    def check() -> list[str]:
        alerts = budgets.send_alerts(settings, ledger, cfg, budgets.status(ledger, cfg, october, NOW))
        assert all(a.delivered for a in alerts.values())
        return list(alerts)

    assert check() == ["budget:team:nlp:2026-10:50"]
    assert check() == []  # the same threshold never fires twice
    assert len(received) == 1 and "nlp" in received[0]["text"] and "71.2%" in received[0]["text"]
    with ledger.write() as s:  # 2 h more at 5.00/h: 81.1765 -> past 80%
        add_machine(
            s, "m-more", team="nlp", price="5", gpus=1, intervals=[("2026-10-20T00:00:00", "2026-10-20T02:00:00")]
        )
    assert check() == ["budget:team:nlp:2026-10:80"]
    with ledger.write() as s:  # 4 h at 5.00/h: 101.1765 -> past 100%
        add_machine(
            s, "m-most", team="nlp", price="5", gpus=1, intervals=[("2026-10-21T00:00:00", "2026-10-21T04:00:00")]
        )
    assert check() == ["budget:team:nlp:2026-10:100"]
    assert check() == []
    assert [r["text"].split("past the ")[1] for r in received] == ["50% threshold", "80% threshold", "100% threshold"]
    with ledger.read() as s:
        assert s.scalar(select(func.count()).select_from(Notification).where(Notification.delivered)) == 3


def test_alert_not_delivered_is_retried_until_delivered_once(
    tmp_path: Path, monkeypatch: Any, webhook: Any, ledger_url: str
) -> None:
    url, received = webhook
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)
    ledger = Ledger(ledger_url)
    seed(ledger)  # nlp spent 71.1765 of 100 in October: past 50%
    october, key = Period.month("2026-10"), "budget:team:nlp:2026-10:50"

    def check(notify: str) -> dict[str, Any]:
        (home / "config.yaml").write_text(f"{notify}budgets:\n  teams:\n    nlp: 100\n")
        settings = Settings.from_env()
        cfg = budgets.load(settings.config)
        return budgets.send_alerts(settings, ledger, cfg, budgets.status(ledger, cfg, october, NOW))

    for _ in range(2):  # no webhook: not delivered, and said so on every run
        [(got, alert)] = check("").items()
        assert got == key and not alert.delivered and alert.describe() == "not delivered (no webhook configured)"
    [(got, alert)] = check("notify:\n  webhook_url: http://127.0.0.1:9/down\n").items()
    assert not alert.delivered and alert.describe().startswith("not delivered: webhook failed")
    [(got, alert)] = check(f"notify:\n  webhook_url: {url}\n").items()
    assert got == key and alert.delivered and len(received) == 1 and "past the 50% threshold" in received[0]["text"]
    assert check(f"notify:\n  webhook_url: {url}\n") == {} and check("") == {}  # delivered: never again
    assert len(received) == 1
    with ledger.read() as s:
        [row] = s.scalars(select(Notification)).all()
        assert row.key == key and row.delivered and row.attempts == 2


def _running_now(ledger: Ledger, team: str, price: str, hours: float) -> None:
    start = datetime.now(UTC) - timedelta(hours=hours)
    if start.month != datetime.now(UTC).month:  # keep it inside this month
        start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with ledger.write() as s:
        add_machine(
            s,
            f"m-{team}",
            team=team,
            price=price,
            gpus=0,
            status="ready",
            intervals=[(start.strftime("%Y-%m-%dT%H:%M:%S"), None)],
            expires=(datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        )


def test_team_over_budget_is_refused(tmp_path: Path, ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    _running_now(ledger, "nlp", "1000", 1)  # at least $0.28 a second: far past $5 in any month
    refuse = config_of(tmp_path, "budgets:\n  refuse_over_budget: true\n  teams:\n    nlp: 5\n    vision: 5\n")
    with ledger.read() as s, pytest.raises(PolicyError) as info:
        budgets.check_team_budget(refuse, s, "nlp")
    message = str(info.value)
    assert message.startswith("policy (team nlp, rule budgets.teams.nlp): the team has spent $")
    assert "of its $5.00 budget for " in message
    with ledger.read() as s:
        budgets.check_team_budget(refuse, s, "vision")  # vision spent nothing
    warn_only = config_of(tmp_path, "budgets:\n  teams:\n    nlp: 5\n")
    with ledger.read() as s:
        budgets.check_team_budget(warn_only, s, "nlp")  # a budget alone only alerts


def test_up_refused_over_budget_writes_nothing(deepops: Any) -> None:
    deepops.write_config("budgets:\n  refuse_over_budget: true\n  teams:\n    nlp: 5\n")
    ledger = deepops.ledger()
    _running_now(ledger, "nlp", "1000", 1)
    proc = deepops.run("up", "--gpus", "0", "--team", "nlp", "--ttl", "30m", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "rule budgets.teams.nlp" in proc.stderr and "budget for" in proc.stderr
    with ledger.read() as s:
        assert s.scalar(select(func.count()).select_from(Machine)) == 1  # only the seeded one


def test_cli_budgets(deepops: Any) -> None:
    seed(deepops.ledger())
    deepops.write_config("budgets:\n  teams:\n    vision: 100\n    nlp: 70\n")
    out = json.loads(deepops.run("cost", "budgets", "--month", "2026-10", "--json", check=True).stdout)
    assert {b["name"]: (b["spent"], b["state"]) for b in out["budgets"]} == {
        "vision": (48.602056, "ok"),
        "nlp": (71.1765, "over budget"),
    }
    assert out["alerts_sent"] == [] and out["alerts_not_delivered"] == []  # a past month sends no alerts
    table = deepops.run("cost", "budgets", "--month", "2026-10", check=True).stdout
    assert "over budget" in table and "$70.00" in table


def test_cli_budgets_says_not_delivered_and_delivers_later(deepops: Any, webhook: Any) -> None:
    url, received = webhook
    _running_now(deepops.ledger(), "nlp", "1000", 1)  # far past $5 this month
    budget = "budgets:\n  teams:\n    nlp: 5\n"
    deepops.write_config(budget)
    first = deepops.run("cost", "budgets", check=True)
    assert "alert sent" not in first.stderr
    assert "alert budget:team:nlp:" in first.stderr and ":100 not delivered (no webhook configured)" in first.stderr
    out = deepops.json("cost", "budgets")
    assert out["alerts_sent"] == [] and [a["error"] for a in out["alerts_not_delivered"]] == [
        "no webhook configured (notify.webhook_url)"
    ]
    deepops.write_config(f"notify:\n  webhook_url: {url}\n{budget}")
    later = deepops.run("cost", "budgets", check=True)
    assert "alert sent: budget:team:nlp:" in later.stderr and len(received) == 1
    assert "alert" not in deepops.run("cost", "budgets", check=True).stderr and len(received) == 1
