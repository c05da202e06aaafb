"""The reaper cycle against an in-test provider, on SQLite and PostgreSQL: guards, reconcile
(orphans, ghosts), warnings with grace, extend, the cap, dry runs and two reapers at once."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Event, Machine, Notification, UsageInterval, UtilizationSample
from deepops_infra.lifecycle import extend
from deepops_infra.providers.base import Utilization
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.reaper_fakes import FakeProvider, add_machine, settings_for


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)


def ours(ledger: Ledger, **extra: str) -> dict[str, str]:
    with ledger.write() as session:
        inst = store.installation_id(session)
    return {"deepops-managed": "true", "deepops-installation": inst, **extra}


def idle_for(hours: float) -> Utilization:
    now = datetime.now(UTC)
    return Utilization(
        at=now, gpu_percent=[0.0], gpu_memory_percent=[1.0], active=False, last_active_at=now - timedelta(hours=hours)
    )


def busy() -> Utilization:
    now = datetime.now(UTC)
    return Utilization(at=now, gpu_percent=[97.0], gpu_memory_percent=[60.0], active=True, last_active_at=now)


def by_machine(report) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    out: dict[str, list[str]] = {}
    for a in report.actions:
        out.setdefault(a.machine_id or a.resource.resource_id, []).append(a.kind)
    return out


def test_only_the_right_ones_are_acted_on(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    tags = ours(ledger)
    expired = add_machine(ledger, age=timedelta(hours=3), ttl=timedelta(hours=2))
    live = add_machine(ledger, age=timedelta(minutes=10))
    idle = add_machine(ledger, age=timedelta(hours=3), idle_timeout=timedelta(hours=1))
    protected = add_machine(ledger, age=timedelta(hours=3), ttl=timedelta(hours=2))
    ghost = add_machine(ledger, age=timedelta(hours=2))
    for mid in (expired, live, idle):
        fake.add(mid, tags)
    fake.add(protected, {**tags, "deepops-protect": "true"})
    fake.add("m-f0re1gn0", {"deepops-machine": "m-f0re1gn0"})  # not managed by anyone we know
    fake.add("m-0ther000", {"deepops-managed": "true", "deepops-installation": "inst-someone-else"})
    fake.add("m-0rphan00", tags)  # ours, and no ledger row
    fake.add("m-0rphan01", {**tags, "deepops-protect": "true"})  # ours, no row, but protected
    fake.util = {expired: busy(), live: busy(), idle: idle_for(2), protected: idle_for(3)}
    gone_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=7)
    fake.gone_at[ghost] = gone_at
    rs = ReaperSettings(grace=timedelta(0), orphan_grace=timedelta(0))
    reaper = Reaper(settings, ledger, {"fake": fake}, rs)

    dry = reaper.run(dry_run=True)
    assert by_machine(dry) == {
        expired: ["warn"],
        idle: ["warn"],
        ghost: ["close-ghost"],
        "i-m-0rphan00": ["mark-orphan"],  # no ledger row: marked first, removed a grace later
    }
    assert {a.outcome for a in dry.actions} == {"planned"}
    assert dict(dry.resources) == {"ours": 4, "unmanaged": 1, "other-installation": 1, "protected": 2}
    assert not fake.destroyed and not fake.terminated and not fake.checkins
    with ledger.read() as session:
        assert session.scalars(select(Notification)).all() == []
        assert session.scalars(select(UtilizationSample)).all() == []
        assert session.scalars(select(Event).where(Event.kind.like("reaper%"))).all() == []

    first = reaper.run()
    assert by_machine(first) == by_machine(dry) and {a.outcome for a in first.actions} == {"done"}
    assert fake.terminated == [] and fake.destroyed == []
    with ledger.read() as session:
        warned = {
            n.machine_id: n for n in session.scalars(select(Notification).where(Notification.machine_id.isnot(None)))
        }
        assert set(warned) == {expired, idle}
        assert warned[idle].body["text"].startswith(f"deepops: {idle} (ada, ml/p) will be ended at ")
        assert not warned[idle].delivered and warned[idle].error.startswith("no webhook configured")
        assert store.find_machine(session, idle).status == states.IDLE  # warned for idling
        closed = store.find_machine(session, ghost)
        assert closed.status == states.TERMINATED and closed.ended_at == gone_at
        usage = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == ghost)).one()
        assert usage.ended_at == gone_at  # billed until the confirmed time, not until the reaper noticed
        samples = session.scalars(select(UtilizationSample)).all()
        assert {s.machine_id for s in samples} == {expired, live, idle}  # protected ones are not even read
    assert {mid for mid, _ in fake.checkins} == {expired, live, idle}

    second = reaper.run()  # grace 0: the warned machines and the marked orphan are due now
    assert by_machine(second) == {expired: ["teardown"], idle: ["teardown"], "i-m-0rphan00": ["terminate-orphan"]}
    assert fake.terminated == ["i-m-0rphan00"]
    assert sorted(fake.destroyed) == sorted([expired, idle])
    with ledger.read() as session:
        for mid, reason in ((expired, "ttl-expired"), (idle, "idle")):
            m = store.find_machine(session, mid)
            assert m.status == states.TERMINATED and m.ended_at is not None
            [event] = [e for e in store.events(session, mid) if e.kind == "reaper"]
            assert event.reason.startswith(f"reaper: {reason}: ") and event.data["reason"] == reason
        for mid in (live, protected):
            assert store.find_machine(session, mid).ended_at is None
    assert "m-f0re1gn0" not in fake.destroyed and "i-m-0ther000" in fake.resources and "i-m-0rphan01" in fake.resources
    assert reaper.run().actions == []


def test_extend_within_the_grace_keeps_the_machine(tmp_path, ledger_url):
    settings = settings_for(tmp_path, "policy:\n  default:\n    max_ttl: 3d\n")
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    mid = add_machine(ledger, age=timedelta(hours=2), idle_timeout=timedelta(hours=1))
    fake.add(mid, ours(ledger))
    fake.util[mid] = idle_for(2)
    reaper = Reaper(settings, ledger, {"fake": fake}, ReaperSettings(grace=timedelta(seconds=1)))
    assert by_machine(reaper.run()) == {mid: ["warn"]}
    extend(settings, ledger, mid, timedelta(hours=1))
    import time

    time.sleep(1.1)  # the grace is over, but the extend restarted the idle clock
    report = reaper.run()
    assert report.actions[0].kind == "mark-ready" and fake.destroyed == []
    with ledger.read() as session:
        assert store.find_machine(session, mid).status == states.READY


def test_setup_stuck_teardown_stuck_failed_and_agent_ended(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    tags = ours(ledger)
    stuck = add_machine(ledger, status=states.CONFIGURING, age=timedelta(hours=1))
    fresh = add_machine(ledger, status=states.PROVISIONING, age=timedelta(minutes=1))
    leaving = add_machine(ledger, status=states.TERMINATING, age=timedelta(hours=1))
    failed = add_machine(ledger, status=states.FAILED, age=timedelta(minutes=1))
    dead = add_machine(ledger, age=timedelta(minutes=30))
    for mid in (stuck, fresh, leaving, failed, dead):
        fake.add(mid, tags)
    fake.util[dead] = Utilization(
        at=datetime.now(UTC), gpu_percent=[], gpu_memory_percent=[], active=False, ended_by_agent="expired"
    )
    report = Reaper(settings, ledger, {"fake": fake}, ReaperSettings(setup_timeout=timedelta(minutes=30))).run()
    assert by_machine(report) == {stuck: ["fail"], leaving: ["teardown"], failed: ["teardown"], dead: ["teardown"]}
    assert sorted(fake.destroyed) == sorted([stuck, leaving, failed, dead])
    with ledger.read() as session:
        assert store.find_machine(session, stuck).status == states.FAILED
        assert store.find_machine(session, leaving).status == states.TERMINATED
        assert store.find_machine(session, fresh).ended_at is None
        assert all(store.find_machine(session, m).ended_at for m in (stuck, leaving, failed, dead))


def test_the_cap_stops_a_runaway_and_says_so(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    tags = ours(ledger)
    ids = [add_machine(ledger, status=states.FAILED) for _ in range(5)]
    for mid in ids:
        fake.add(mid, tags)
    report = Reaper(settings, ledger, {"fake": fake}, ReaperSettings(max_actions=2)).run()
    assert [a.outcome for a in report.actions].count("done") == 2
    assert [a.outcome for a in report.actions].count("capped") == 3 and len(fake.destroyed) == 2
    assert report.capped.startswith("cap reached: 5 destructive actions planned, 2 allowed")
    assert report.capped in report.errors
    # a fleet of 12 with max_fraction 0.25: 3 per cycle
    more = [add_machine(ledger, status=states.FAILED) for _ in range(9)]
    for mid in more:
        fake.add(mid, tags)
    rs = ReaperSettings(max_actions=50, max_fraction=0.25, fraction_min_fleet=10)
    report = Reaper(settings, ledger, {"fake": fake}, rs).run()
    assert [a.outcome for a in report.actions].count("done") == 3 and len(fake.destroyed) == 5


def test_discovery_failure_acts_on_nothing_there(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    add_machine(ledger, status=states.FAILED)

    def broken():  # type: ignore[no-untyped-def]
        raise ConnectionError("endpoint unreachable")

    fake.discover = broken  # type: ignore[method-assign]
    report = Reaper(settings, ledger, {"fake": fake}).run()
    assert report.actions == [] and report.errors == ["fake: discovery failed: ConnectionError: endpoint unreachable"]


def test_two_reapers_started_together_act_on_each_machine_once(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider(destroy_seconds=0.3)
    tags = ours(ledger)
    ids = [add_machine(ledger, status=states.FAILED) for _ in range(4)]
    for mid in ids:
        fake.add(mid, tags)
    reapers = [Reaper(settings, Ledger(ledger_url), {"fake": fake}) for _ in range(2)]
    start = threading.Barrier(2)
    reports = []

    def go(r: Reaper) -> None:
        start.wait()
        reports.append(r.run())

    threads = [threading.Thread(target=go, args=(r,)) for r in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(fake.destroyed) == sorted(ids)  # each exactly once
    done = [a.machine_id for rep in reports for a in rep.actions if a.outcome == "done"]
    assert sorted(done) == sorted(ids)
    with ledger.read() as session:
        for mid in ids:
            assert len([e for e in store.events(session, mid) if e.kind == "reaper"]) == 1
            assert session.get(Machine, mid).ended_at is not None


def test_a_failed_machine_kept_for_debugging_waits_for_its_ttl(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    tags = ours(ledger)
    young = add_machine(ledger, status=states.FAILED, age=timedelta(minutes=5), ttl=timedelta(hours=1))
    old = add_machine(ledger, status=states.FAILED, age=timedelta(hours=2), ttl=timedelta(hours=1))
    for mid in (young, old):
        fake.add(mid, tags)
        with ledger.write() as session:
            store.add_event(session, store.find_machine(session, mid), "kept", "kept for debugging")
    report = Reaper(settings, ledger, {"fake": fake}).run()
    assert by_machine(report) == {old: ["teardown"]} and report.actions[0].detail.startswith("kept for debugging")
    assert fake.destroyed == [old]


def test_a_team_over_a_stopping_budget_is_warned_then_ended(tmp_path, ledger_url):
    """budgets.teams.<t>.stop_running_over_budget: the reaper warns, waits the grace, then ends the
    team's running machines; every cycle also sends the month's budget alerts (once per threshold)."""
    import time

    settings = settings_for(
        tmp_path, "budgets:\n  teams:\n    ml: {monthly: 0.01, stop_running_over_budget: true}\n    cv: 0.01\n"
    )
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    spender = add_machine(ledger, age=timedelta(hours=2), team="ml")
    other = add_machine(ledger, age=timedelta(hours=2), team="cv")  # over budget, but its budget only alerts
    for mid in (spender, other):
        fake.add(mid, ours(ledger))
        fake.util[mid] = busy()
    reaper = Reaper(settings, ledger, {"fake": fake}, ReaperSettings(grace=timedelta(seconds=1)))
    assert by_machine(reaper.run()) == {spender: ["warn"]}
    time.sleep(1.1)
    reaper.run()
    assert fake.destroyed == [spender]
    with ledger.read() as session:
        keys = set(session.scalars(select(Notification.key)))
        reasons = [e.reason for e in session.scalars(select(Event).where(Event.machine_id == spender))]
    assert {k for k in keys if k.startswith("budget:")} == {
        f"budget:team:ml:{datetime.now(UTC):%Y-%m}:100",
        f"budget:team:cv:{datetime.now(UTC):%Y-%m}:100",
    }
    assert any("spent" in (r or "") and "budget" in (r or "") for r in reasons)


def test_a_reading_that_fails_counts_as_active_and_is_reported(tmp_path, ledger_url):
    """The default utilization_many reads machine by machine: one that raises is unknown (kept,
    reported as a cycle error), and the others are still read and acted on."""
    ledger = Ledger(ledger_url)

    class Broken(FakeProvider):
        def utilization(self, machine):  # type: ignore[no-untyped-def]
            if machine.id == broken:
                raise OSError("agent unreachable")
            return super().utilization(machine)

    fake = Broken()
    broken = add_machine(ledger, age=timedelta(hours=5), idle_timeout=timedelta(minutes=30))
    idle = add_machine(ledger, age=timedelta(hours=5), idle_timeout=timedelta(minutes=30))
    for mid in (broken, idle):
        fake.add(mid, ours(ledger, **{"deepops-machine": mid}))
        fake.util[mid] = idle_for(2)
    report = Reaper(settings_for(tmp_path), ledger, {"fake": fake}, ReaperSettings()).run(dry_run=True)
    assert [(a.machine_id, a.kind, a.reason) for a in report.actions] == [(idle, "warn", "idle")]
    assert report.errors == [f"{broken}: utilization: OSError: agent unreachable"]
