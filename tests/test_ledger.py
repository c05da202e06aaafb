"""The ledger on SQLite and PostgreSQL through the same code: schema, reservations, races, costs."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from deepops_infra.config import Settings
from deepops_infra.errors import CapacityError, PolicyError
from deepops_infra.images import get_image
from deepops_infra.intake import Options, build_request
from deepops_infra.ledger import store
from deepops_infra.ledger.db import HEAD_REVISION, Ledger, current_revision
from deepops_infra.ledger.schema import Event, GpuLease, Machine, UsageInterval
from deepops_infra.lifecycle import Lifecycle, extend
from deepops_infra.progress import QuietProgress
from deepops_infra.providers.onprem.provider import OnpremProvider
from tests.conftest import declared_pool

POOL = declared_pool(4)


@pytest.fixture
def home(tmp_path, monkeypatch, ledger_url):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "pool.yaml").write_text(POOL)
    (home / "config.yaml").write_text("policy:\n  teams:\n    small:\n      max_gpus_running: 2\n      max_ttl: 10h\n")
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", ledger_url)
    return home


def record(gpus: str, team: str = "default") -> Machine:
    settings = Settings.from_env()
    ledger = Ledger(settings.ledger_url)
    try:
        request, image = build_request(settings, Options(gpus=gpus, team=team, ttl="8h"))
        provider = OnpremProvider(settings, ledger)
        lifecycle = Lifecycle(settings, ledger, provider, QuietProgress())
        return lifecycle.record(request, image, provider.plan(request, image))
    finally:
        ledger.close()


def test_schema_is_migrated_once(home, ledger_url):
    ledger = Ledger(ledger_url)
    assert current_revision(ledger.engine) == HEAD_REVISION
    with ledger.read() as session:
        assert session.scalar(select(func.count()).select_from(Machine)) == 0
    Ledger(ledger_url).close()  # a second open finds the schema in place
    if ledger.dialect == "sqlite":
        with ledger.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_record_writes_machine_event_and_lease_before_anything_else(home, ledger_url):
    machine = record("A100:2")
    ledger = Ledger(ledger_url)
    with ledger.read() as session:
        row = session.get(Machine, machine.id)
        assert row.status == "requested" and row.host == "localhost" and row.gpu_count == 2
        assert row.price_per_hour == Decimal("4.1")  # host 0.1 + 2 x 2.0
        assert row.plan["gpu_indexes"] == [0, 1]
        assert row.created_at.tzinfo is UTC
        # the request, and the launcher holding the machine's launch lock (ledger/liveness.py)
        events = [(e.kind, e.to_status) for e in session.scalars(select(Event))]
        assert events == [("transition", "requested"), ("launcher", None)]
        assert store.leased_gpus(session, machine.id) == [0, 1]
    second = record("A100:2")
    with ledger.read() as session:
        assert store.leased_gpus(session, second.id) == [2, 3]
    with pytest.raises(CapacityError, match="every matching GPU is leased"):
        record("A100:1")
    with ledger.read() as session:
        assert session.scalar(select(func.count()).select_from(Machine)) == 2


def test_race_for_the_last_gpu_has_one_winner(home, ledger_url):
    record("A100:3")
    barrier = threading.Barrier(6)
    results: list[object] = []

    def contender() -> None:
        barrier.wait()
        try:
            results.append(record("A100:1").id)
        except CapacityError as exc:
            results.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [r for r in results if isinstance(r, str)]
    assert len(results) == 6 and len(winners) == 1, results
    with Ledger(ledger_url).read() as session:
        active = session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))).all()
        assert sorted(lease.gpu_index for lease in active) == [0, 1, 2, 3]
        assert session.scalar(select(func.count()).select_from(Machine)) == 2


def test_team_gpu_limit_counts_running_machines(home, ledger_url):
    record("A100:2", team="small")
    with pytest.raises(PolicyError, match=r"rule max_gpus_running.*runs 2 GPUs"):
        record("A100:1", team="small")
    record("A100:1", team="other")  # another team is not limited by it


def test_costs_and_release_use_frozen_prices(home, ledger_url):
    ledger = Ledger(ledger_url)
    machine = record("A100:1")
    start = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    with ledger.write() as session:
        row = session.get(Machine, machine.id)
        session.add(
            UsageInterval(
                machine_id=row.id,
                started_at=start,
                ended_at=start + timedelta(minutes=90),
                price_per_hour=row.price_per_hour,
                gpu_count=1,
            )
        )
    with ledger.read() as session:
        # 2.1 USD/h for 1.5 h, frozen at launch
        assert store.costs(session, [machine.id])[machine.id] == Decimal("3.150000")
    provider = OnpremProvider(Settings.from_env(), ledger)
    with ledger.write() as session:
        provider.release_reservation(session, session.get(Machine, machine.id), store.now())
    with ledger.read() as session:
        assert store.leased_gpus(session, machine.id) == []


def test_lifecycle_transitions_are_enforced(home, ledger_url):
    ledger = Ledger(ledger_url)
    machine = record("0")
    with ledger.write() as session, pytest.raises(ValueError, match="requested -> ready"):
        store.transition(session, session.get(Machine, machine.id), "ready", "skip ahead")


def test_extend_within_and_beyond_policy(home, ledger_url):
    settings = Settings.from_env()
    ledger = Ledger(settings.ledger_url)
    machine = record("0", team="small")
    before = machine.expires_at
    extended = extend(settings, ledger, machine.id, timedelta(hours=1))
    assert extended.expires_at == before + timedelta(hours=1)
    with pytest.raises(PolicyError, match="team small, rule max_ttl"):
        extend(settings, ledger, machine.id, timedelta(hours=5))
    with ledger.read() as session:
        assert session.get(Machine, machine.id).expires_at == before + timedelta(hours=1)
        assert [e.kind for e in store.events(session, machine.id)] == ["transition", "launcher", "extend"]


def test_image_pin_recorded(home, ledger_url):
    machine = record("0")
    assert machine.image_pin == get_image("cpu-minimal").onprem.pin


def test_concurrent_first_opens_migrate_once(tmp_path):
    """Several commands starting on a fresh SQLite home at the same moment all get the schema."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from deepops_infra.ledger.db import Ledger; Ledger({url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.stderr.read() for p in procs if p.wait(timeout=120) != 0]
    assert errors == []
    assert current_revision(Ledger(url).engine) == HEAD_REVISION


def test_launch_locks_of_an_in_memory_ledger_stay_out_of_the_working_folder(tmp_path, monkeypatch) -> None:
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.ledger.liveness import LaunchLocks

    monkeypatch.chdir(tmp_path)
    locks = LaunchLocks.of(Ledger("sqlite://"))
    locks.hold("m-0000beef")
    try:
        assert locks.alive("m-0000beef")
    finally:
        locks.release("m-0000beef")
    assert list(tmp_path.iterdir()) == []  # a checkout run from stays clean
