"""The webhook: Slack-compatible body, sent once per key, delivery recorded, URL never stored."""

import json

from sqlalchemy import select

from deepops_infra.config import Settings
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Notification
from deepops_infra.notify import send_once


def test_sent_once_with_slack_body(tmp_path, monkeypatch, webhook, ledger_url):
    url, received = webhook
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(f"notify:\n  webhook_url: {url}\n")
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    monkeypatch.delenv("DEEPOPS_WEBHOOK_URL", raising=False)
    settings, ledger = Settings.from_env(), Ledger(ledger_url)
    assert send_once(settings, ledger, "budget:ml:2026-11:80", "budget-alert", "team ml at 80%", {"spent": "$800"})
    assert not send_once(settings, ledger, "budget:ml:2026-11:80", "budget-alert", "team ml at 80%")
    assert len(received) == 1
    assert received[0]["text"] == "team ml at 80%" and received[0]["blocks"][1]["fields"][0]["text"] == "*spent*\n$800"
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert row.delivered and row.error is None and "secret" not in json.dumps(row.body)


def test_failed_delivery_is_recorded(tmp_path, monkeypatch, ledger_url):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    ledger = Ledger(ledger_url)
    assert send_once(Settings.from_env(), ledger, "k1", "reaper-warning", "m-1 idle")
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert not row.delivered and "webhook failed" in row.error and "127.0.0.1:9" not in row.error
