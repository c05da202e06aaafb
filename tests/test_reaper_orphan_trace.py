"""Orphans with no ledger row leave a trace (reaper_actions, migration 0004), on SQLite and
PostgreSQL: marked first, then removed or failed, each step is a row with the resource, reason and
outcome; an orphan of an ended machine is removed at once and still gets its event; a ledger at
0003 with data migrates to 0004 and the commands that read it keep working."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from deepops_infra.errors import OperationError
from deepops_infra.ledger import HEAD_REVISION, store
from deepops_infra.ledger.db import MIGRATIONS, Ledger, current_revision, make_engine
from deepops_infra.ledger.schema import Event, Notification, ReaperAction
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.reaper_fakes import FakeProvider, add_machine, settings_for


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)


class FailingOnce(FakeProvider):
    def __init__(self, resource_id: str) -> None:
        super().__init__()
        self.fail = {resource_id}

    def terminate_resource(self, resource):  # type: ignore[no-untyped-def]
        if resource.resource_id in self.fail:
            self.fail.discard(resource.resource_id)
            raise OperationError(f"{resource.resource_id}: the cloud said no")
        super().terminate_resource(resource)


def test_orphans_without_a_row_are_recorded_whether_removed_or_not(tmp_path, ledger_url):
    ledger = Ledger(ledger_url)
    settings = settings_for(tmp_path)
    with ledger.write() as session:
        inst = store.installation_id(session)
    fake = FailingOnce("i-m-norow000")
    tags = {"deepops-managed": "true", "deepops-installation": inst, "deepops-owner": "ada"}
    fake.add("m-norow000", {**tags, "deepops-machine": "m-norow000"})
    ended = add_machine(ledger, cloud="fake")
    with ledger.write() as session:
        store.find_machine(session, ended).ended_at = datetime.now(UTC) - timedelta(hours=1)
    fake.add(ended, {**tags, "deepops-machine": ended})
    reaper = Reaper(settings, ledger, {"fake": fake}, ReaperSettings(orphan_grace=timedelta(0)))

    assert reaper.run(dry_run=True).actions and not _traces(ledger)  # a dry run records nothing
    first = reaper.run()  # the ended machine's orphan goes at once; the one with no row is marked
    assert [(a.kind, a.outcome) for a in first.actions] == [("mark-orphan", "done"), ("terminate-orphan", "done")]
    assert fake.terminated == [f"i-{ended}"]
    second = reaper.run()
    assert [(a.resource.resource_id, a.outcome) for a in second.actions] == [("i-m-norow000", "failed")]
    third = reaper.run()
    assert [(a.resource.resource_id, a.outcome) for a in third.actions] == [("i-m-norow000", "done")]
    assert reaper.run().actions == []

    traces = _traces(ledger)
    assert [(t.resource_id, t.machine_tag, t.action, t.reason, t.outcome) for t in traces] == [
        ("i-m-norow000", "m-norow000", "mark-orphan", "orphan", "done"),
        ("i-m-norow000", "m-norow000", "terminate-orphan", "orphan", "failed"),
        ("i-m-norow000", "m-norow000", "terminate-orphan", "orphan", "done"),
    ]
    assert "the cloud said no" in traces[1].detail and traces[1].data["tags"]["deepops-owner"] == "ada"
    assert traces[1].location == "fake-1" and traces[1].cloud == "fake"
    with ledger.read() as session:
        events = session.scalars(select(Event).where(Event.machine_id == ended, Event.kind == "reaper")).all()
    assert len(events) == 1 and "orphan removed" in (events[0].reason or "")  # a row: an event, not a trace


def test_an_orphan_with_no_row_is_marked_notified_once_and_removed_only_after_the_grace(tmp_path, ledger_url):
    ledger = Ledger(ledger_url)
    with ledger.write() as session:
        inst = store.installation_id(session)
    fake = FakeProvider()
    fake.add("m-n0row001", {"deepops-managed": "true", "deepops-installation": inst, "deepops-machine": "m-n0row001"})
    reaper = Reaper(settings_for(tmp_path), ledger, {"fake": fake}, ReaperSettings())  # orphan_grace: 1h

    [planned] = reaper.run(dry_run=True).actions
    assert (planned.kind, planned.outcome) == ("mark-orphan", "planned") and not _traces(ledger)
    [mark] = reaper.run().actions
    assert (mark.kind, mark.outcome) == ("mark-orphan", "done") and mark.deadline is not None
    second = reaper.run()  # seen again within the grace: reported, not touched, not notified again
    assert second.actions == [] and [w["machine"] for w in second.waiting] == ["m-n0row001"]
    assert fake.terminated == []
    with ledger.write() as session:
        [notice] = session.scalars(select(Notification)).all()
        assert notice.kind == "reaper-orphan" and "no ledger row" in notice.body["text"]
        [trace] = session.scalars(select(ReaperAction)).all()
        trace.at -= timedelta(minutes=61)  # the grace has run since it was first seen
    [removal] = reaper.run().actions
    assert (removal.kind, removal.outcome) == ("terminate-orphan", "done") and fake.terminated == ["i-m-n0row001"]
    assert [t.action for t in _traces(ledger)] == ["mark-orphan", "terminate-orphan"]


def _traces(ledger: Ledger) -> list[ReaperAction]:
    with ledger.read() as session:
        return list(session.scalars(select(ReaperAction).order_by(ReaperAction.id)))


def test_a_ledger_at_0003_with_data_migrates_to_0004_and_back(tmp_path, ledger_url):
    _migrate(ledger_url, "0003")
    engine = make_engine(ledger_url)
    with engine.connect() as conn, conn.begin():
        conn.execute(
            text(
                "INSERT INTO machines (id, status, cloud, owner, team, project, image, gpu_count, request, plan, "
                "provider_refs, price_per_hour, price_breakdown, created_at, expires_at) VALUES ('m-old00001', "
                "'ready', 'onprem', 'ada', 'ml', 'p', 'cpu-minimal', 0, '{}', '{}', '{}', 1.5, '{}', "
                "'2026-10-01 08:00:00', '2026-10-01 16:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO events (machine_id, at, kind, to_status, reason) "
                "VALUES ('m-old00001', '2026-10-01 08:00:00', 'transition', 'ready', 'ready')"
            )
        )
    _migrate(ledger_url, "0004")
    with engine.connect() as conn, conn.begin():
        conn.execute(
            text(
                "INSERT INTO reaper_actions (at, cloud, resource_id, action, reason, outcome) "
                "VALUES ('2026-10-02 08:00:00', 'aws', 'i-0123', 'terminate-orphan', 'orphan', 'done')"
            )
        )
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 1
    _migrate(ledger_url, "0003", down=True)  # and back: the table goes, the data stays
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM machines")).scalar() == 1
        with pytest.raises(DBAPIError):
            conn.execute(text("SELECT count(*) FROM reaper_actions"))
    engine.dispose()

    ledger = Ledger(ledger_url)  # opening migrates to the head; what `ls` and `show` read is all there
    assert current_revision(ledger.engine) == HEAD_REVISION
    with ledger.read() as session:
        [machine] = store.list_machines(session)
        assert (machine.id, machine.price_per_hour, machine.status) == ("m-old00001", Decimal("1.5"), "ready")
        assert [e.reason for e in store.events(session, "m-old00001")] == ["ready"]
    with ledger.write() as session:
        session.add(
            ReaperAction(
                at=datetime.now(UTC),
                cloud="aws",
                resource_id="i-0456",
                action="terminate-orphan",
                reason="orphan",
                outcome="done",
            )
        )
    assert [t.resource_id for t in _traces(ledger)] == ["i-0456"]


def _migrate(url: str, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
    assert current_revision(engine) == revision
    engine.dispose()
