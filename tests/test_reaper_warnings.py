"""Reaper warnings over a run of cycles, on SQLite and PostgreSQL, with a clock the test moves
(store.now): an idle machine is warned a grace before its idle timeout and ended on the first
cycle at or after it; activity after the warning keeps it; a warning that could not be delivered
still starts the grace, and its delivery is retried while the machine waits."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Notification
from deepops_infra.providers.base import Utilization
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.reaper_fakes import FakeProvider, add_machine, settings_for

START = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, datetime]]:
    """The ledger's clock, set by the test (`clock["now"]`): cycles a minute apart without waiting."""
    now = {"now": START}
    monkeypatch.setattr(store, "now", lambda: now["now"])
    yield now


def ours(ledger: Ledger) -> dict[str, str]:
    with ledger.write() as session:
        return {"deepops-managed": "true", "deepops-installation": store.installation_id(session)}


def idle_since(at: datetime, now: datetime) -> Utilization:
    return Utilization(at=now, gpu_percent=[0.0], gpu_memory_percent=[1.0], active=False, last_active_at=at)


def busy(now: datetime) -> Utilization:
    return Utilization(at=now, gpu_percent=[95.0], gpu_memory_percent=[60.0], active=True, last_active_at=now)


def run_cycles(
    reaper: Reaper, clock: dict[str, datetime], minutes: list[float], util: Callable[[datetime], None]
) -> dict[float, list[tuple[str, str, str]]]:
    """One cycle at each minute after START; (kind, machine, outcome) of the actions, by minute."""
    out: dict[float, list[tuple[str, str, str]]] = {}
    for m in minutes:
        clock["now"] = START + timedelta(minutes=m)
        util(clock["now"])
        report = reaper.run()
        assert not report.errors, report.errors
        if report.actions:
            out[m] = [(a.kind, a.machine_id or "", a.outcome) for a in report.actions]
    return out


def test_idle_machine_is_ended_on_the_first_cycle_at_its_idle_timeout(tmp_path: Any, ledger_url: str, clock) -> None:
    settings, ledger, fake = settings_for(tmp_path), Ledger(ledger_url), FakeProvider()
    hour = add_machine(ledger, age=timedelta(hours=2), idle_timeout=timedelta(hours=1), at=START)
    short = add_machine(ledger, age=timedelta(hours=2), idle_timeout=timedelta(minutes=10), at=START)
    back = add_machine(ledger, age=timedelta(hours=2), idle_timeout=timedelta(hours=1), at=START)
    for mid in (hour, short, back):
        fake.add(mid, ours(ledger))

    def util(now: datetime) -> None:  # all idle since START; `back` is used again at minute 55
        fake.util[hour] = fake.util[short] = idle_since(START, now)
        used = START + timedelta(minutes=55)
        fake.util[back] = busy(now) if now == used else idle_since(used if now > used else START, now)

    reaper = Reaper(settings, ledger, {"fake": fake}, ReaperSettings())  # the defaults: grace 10m
    actions = run_cycles(reaper, clock, sorted([*range(0, 121), 7.5]), util)  # every minute (cycle: 1m)
    assert actions == {
        7.5: [("warn", short, "done")],  # 10m timeout: a grace of 2.5m (a quarter of it), not 10m
        10: [("teardown", short, "done")],
        50: [("warn", hour, "done"), ("warn", back, "done")],  # idle 50 minutes of 60
        55: [("mark-ready", back, "done")],  # in use again: kept
        60: [("teardown", hour, "done")],  # the first cycle at its idle timeout, not a grace later
        105: [("warn", back, "done")],  # a new idle episode: a new warning
        115: [("teardown", back, "done")],
    }
    assert sorted(fake.destroyed) == sorted([hour, short, back])
    with ledger.read() as session:
        warnings = session.scalars(select(Notification).where(Notification.machine_id == back)).all()
        assert len({n.key for n in warnings}) == 2
        ended = store.find_machine(session, hour)
        assert ended.status == states.TERMINATED and ended.ended_at == START + timedelta(minutes=60)


def test_undelivered_warning_starts_the_grace_and_is_delivered_later_once(
    tmp_path: Any, ledger_url: str, clock, webhook
) -> None:
    url, received = webhook
    ledger, fake = Ledger(ledger_url), FakeProvider()
    mid = add_machine(ledger, age=timedelta(hours=2), idle_timeout=timedelta(hours=1), at=START)
    fake.add(mid, ours(ledger))

    def util(now: datetime) -> None:
        fake.util[mid] = idle_since(START, now)

    def reaper(config: str) -> Reaper:
        return Reaper(settings_for(tmp_path, config), ledger, {"fake": fake}, ReaperSettings())

    # no webhook: the warning is recorded (the grace runs) and not delivered; nothing to retry with
    assert run_cycles(reaper(""), clock, [49, 50, 51], util) == {50: [("warn", mid, "done")]}
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert (
        not row.delivered and row.error.startswith("no webhook configured") and row.at == START + timedelta(minutes=50)
    )
    # a webhook that fails: tried again on each cycle, and the teardown does not wait for it
    down = "notify:\n  webhook_url: http://127.0.0.1:9/down\n"
    assert run_cycles(reaper(down), clock, [52, 53], util) == {
        52: [("warn", mid, "failed")],
        53: [("warn", mid, "failed")],
    }
    # a working webhook: the recorded warning is delivered once, then never again
    good = f"notify:\n  webhook_url: {url}\n"
    assert run_cycles(reaper(good), clock, [54, 55, 56, 60], util) == {
        54: [("warn", mid, "done")],
        60: [("teardown", mid, "done")],
    }
    assert len(received) == 1 and received[0]["text"].startswith(f"deepops: {mid} (ada, ml/p) will be ended at ")
    assert "Using it again keeps it" in received[0]["text"]
    with ledger.read() as session:
        [row] = session.scalars(select(Notification)).all()
    assert row.delivered and row.error is None and row.attempts == 3 and row.sending_since is None
    assert row.delivered_at == START + timedelta(minutes=54) and row.at == START + timedelta(minutes=50)
