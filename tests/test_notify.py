"""The webhook: Slack-compatible body, sent once per key, delivery recorded, URL never stored."""

import json

import pytest
from sqlalchemy import select

from deepops_infra.config import Settings
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Notification
from deepops_infra.notify import NO_WEBHOOK, Sent, send_once


def test_sent_once_with_slack_body(tmp_path, monkeypatch, webhook, ledger_url):
    url, received = webhook
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(f"notify:\n  webhook_url: {url}\n")
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    monkeypatch.delenv("DEEPOPS_WEBHOOK_URL", raising=False)
    settings, ledger = Settings.from_env(), Ledger(ledger_url)
    first = send_once(settings, ledger, "budget:ml:2026-11:80", "budget-alert", "team ml at 80%", {"spent": "$800"})
    assert first == Sent(first=True, delivered=True)
    assert send_once(settings, ledger, "budget:ml:2026-11:80", "budget-alert", "team ml at 80%") == Sent(first=False)
    assert len(received) == 1
    assert received[0]["text"] == "team ml at 80%" and received[0]["blocks"][1]["fields"][0]["text"] == "*spent*\n$800"
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert row.delivered and row.error is None and "secret" not in json.dumps(row.body)
    assert row.attempts == 1 and row.delivered_at is not None and row.sending_since is None


def test_failed_delivery_is_recorded(tmp_path, monkeypatch, ledger_url):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    ledger = Ledger(ledger_url)
    sent = send_once(Settings.from_env(), ledger, "k1", "reaper-warning", "m-1 idle")
    assert sent.first and not sent.delivered and sent.describe().startswith("not delivered: webhook failed")
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert not row.delivered and "webhook failed" in row.error and "127.0.0.1:9" not in row.error


def _home(tmp_path, monkeypatch, config: str = ""):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(config)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)
    return Settings.from_env()


def test_not_delivered_is_sent_once_a_webhook_exists(tmp_path, monkeypatch, webhook, ledger_url):
    url, received = webhook
    ledger = Ledger(ledger_url)
    nothing = _home(tmp_path, monkeypatch)
    sent = send_once(nothing, ledger, "budget:team:ml:2026-11:50", "budget-alert", "team ml at 50%")
    assert sent == Sent(first=True, error=NO_WEBHOOK) and sent.describe() == "not delivered (no webhook configured)"
    again = send_once(nothing, ledger, "budget:team:ml:2026-11:50", "budget-alert", "team ml at 50%")
    assert again == Sent(first=False, error=NO_WEBHOOK)  # still recorded once, still not delivered
    down = _home(tmp_path, monkeypatch, "notify:\n  webhook_url: http://127.0.0.1:9/down\n")
    failed = send_once(down, ledger, "budget:team:ml:2026-11:50", "budget-alert", "team ml at 50% (new text)")
    assert not failed.first and not failed.delivered and failed.error.startswith("webhook failed")
    hooked = _home(tmp_path, monkeypatch, f"notify:\n  webhook_url: {url}\n")
    late = send_once(hooked, ledger, "budget:team:ml:2026-11:50", "budget-alert", "team ml at 50% (new text)")
    assert late == Sent(first=False, delivered=True)
    assert send_once(hooked, ledger, "budget:team:ml:2026-11:50", "budget-alert", "x") == Sent(first=False)
    assert [r["text"] for r in received] == ["team ml at 50%"]  # the recorded message, delivered once
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert row.delivered and row.error is None and row.attempts == 2 and row.delivered_at >= row.at


def test_one_delivery_when_processes_retry_at_once(tmp_path, monkeypatch, webhook, ledger_url):
    """Several callers retrying one undelivered message: exactly one delivers it; a claim left by a
    process that died is taken over once it is older than the webhook timeout and a margin."""
    import threading
    from datetime import timedelta

    from deepops_infra.ledger import store

    url, received = webhook
    ledger = Ledger(ledger_url)
    assert not send_once(_home(tmp_path, monkeypatch), ledger, "k", "budget-alert", "hello").delivered
    hooked = _home(tmp_path, monkeypatch, f"notify:\n  webhook_url: {url}\n")
    results: list[Sent] = []
    barrier = threading.Barrier(6)

    def retry() -> None:
        barrier.wait()
        results.append(send_once(hooked, ledger, "k", "budget-alert", "hello"))

    threads = [threading.Thread(target=retry) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.delivered for r in results) == 1 and len(received) == 1

    with ledger.write() as session:  # a claim in flight: left alone ...
        session.add(Notification(key="k2", kind="budget-alert", at=store.now(), body={"text": "hi"}))
        session.flush()
        session.scalars(select(Notification).where(Notification.key == "k2")).one().sending_since = store.now()
    assert send_once(hooked, ledger, "k2", "budget-alert", "hi") == Sent(first=False) and len(received) == 1
    with ledger.write() as session:  # ... until its process must have died
        row = session.scalars(select(Notification).where(Notification.key == "k2")).one()
        row.sending_since = store.now() - timedelta(minutes=5)
    assert send_once(hooked, ledger, "k2", "budget-alert", "hi") == Sent(first=False, delivered=True)
    assert len(received) == 2


def _migrate(url: str, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    from deepops_infra.ledger.db import MIGRATIONS, make_engine

    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
    engine.dispose()


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")  # batch downgrade on SQLite
def test_messages_recorded_before_the_migration_keep_their_state(tmp_path, monkeypatch, webhook, ledger_url):
    """0008: one delivered before counts as delivered (when recorded); one that was not is sent now."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from deepops_infra.ledger.db import MIGRATIONS, make_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    before = ScriptDirectory.from_config(cfg).get_revision("0008").down_revision
    _migrate(ledger_url, before)
    engine = make_engine(ledger_url)
    with engine.connect() as conn, conn.begin():
        for key, delivered in (("old:sent", True), ("old:unsent", False)):
            conn.execute(
                text(
                    "INSERT INTO notifications (key, kind, at, body, delivered, error) "
                    "VALUES (:key, 'budget-alert', :at, :body, :delivered, :error)"
                ),
                {
                    "key": key,
                    "at": "2026-11-01 10:00:00",
                    "body": json.dumps({"text": key}),
                    "delivered": delivered,
                    "error": None if delivered else "no webhook configured (notify.webhook_url)",
                },
            )
    engine.dispose()
    ledger = Ledger(ledger_url)  # opening migrates to the head
    with ledger.read() as session:
        rows = {n.key: n for n in session.scalars(select(Notification))}
    assert rows["old:sent"].delivered_at == rows["old:sent"].at and rows["old:sent"].attempts == 1
    assert rows["old:unsent"].delivered_at is None and rows["old:unsent"].attempts == 0
    url, received = webhook
    hooked = _home(tmp_path, monkeypatch, f"notify:\n  webhook_url: {url}\n")
    assert send_once(hooked, ledger, "old:sent", "budget-alert", "x") == Sent(first=False)
    assert send_once(hooked, ledger, "old:unsent", "budget-alert", "x") == Sent(first=False, delivered=True)
    assert [r["text"] for r in received] == ["old:unsent"]
    ledger.engine.dispose()
    _migrate(ledger_url, before, down=True)  # and back: the columns go, the messages stay
    engine = make_engine(ledger_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notifications WHERE delivered = :t"), {"t": True}).scalar() == 2
    engine.dispose()
