"""`deepops ls` reads without SQLAlchemy; it must agree with the ORM path on both ledgers."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from deepops_infra.ledger import quickread, store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine, UsageInterval
from deepops_infra.views import machine_json

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def _seed(ledger: Ledger) -> None:
    with ledger.write() as session:
        for i in range(6):
            ended = T0 + timedelta(hours=3) if i % 2 else None
            session.add(
                Machine(
                    id=f"m-0000000{i}",
                    name=f"n{i}" if i < 3 else None,
                    status="terminated" if ended else "ready",
                    status_reason=None,
                    cloud="onprem",
                    region=None,
                    host="localhost",
                    owner="ana" if i < 4 else "bo",
                    team="t",
                    project="p",
                    image="cpu-minimal",
                    image_pin="sha256:x",
                    accelerator="A100",
                    gpu_count=i,
                    request={"gpus": f"A100:{i}", "ttl": 3600, "idle_timeout": 600},
                    plan={"gpu_indexes": list(range(i))},
                    provider_refs={},
                    price_per_hour=Decimal("0.05") + Decimal("1.25") * i,
                    price_breakdown={},
                    created_at=T0 + timedelta(minutes=i),
                    ready_at=T0 + timedelta(minutes=i + 1),
                    expires_at=T0 + timedelta(hours=8),
                    ended_at=ended,
                )
            )
        session.flush()
        for i in range(6):
            price = Decimal("0.05") + Decimal("1.25") * i
            session.add(
                UsageInterval(
                    machine_id=f"m-0000000{i}",
                    started_at=T0 + timedelta(minutes=i),
                    ended_at=T0 + timedelta(hours=3) if i % 2 else None,
                    price_per_hour=price,
                    gpu_count=i,
                )
            )


def test_quick_and_orm_paths_agree(ledger_url, tmp_path):
    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    _seed(ledger)
    at = T0 + timedelta(hours=5)
    for include_ended, owner in ((False, None), (True, None), (True, "ana"), (False, "bo")):
        quick = quickread.list_machines(ledger.url, include_ended, owner, at)
        assert quick is not None
        with ledger.read() as session:
            machines = store.list_machines(session, include_ended=include_ended, owner=owner)
            spent = store.costs(session, [m.id for m in machines], at)
        assert [machine_json(m, c) for m, c in quick] == [machine_json(m, spent[m.id]) for m in machines]
    # hand-checked: m-00000002 runs 4h58m at 2.55/h = 12.665 USD
    costs = {m.id: c for m, c in quickread.list_machines(ledger.url, True, None, at)}
    assert costs["m-00000002"] == Decimal("12.665000")


def test_quick_path_declines_an_unmigrated_ledger(ledger_url, tmp_path):
    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    assert quickread.list_machines(ledger.url, True, None, T0) is None


def test_quick_and_orm_token_checks_agree(ledger_url, tmp_path):
    """The server checks tokens with one quick read; every case must end as the ORM path ends."""
    from deepops_infra.server import identity

    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    now = store.now()
    secrets: dict[str, str] = {}
    with ledger.write() as session:
        for name, role in (("ana", "member"), ("rev", "member"), ("old", "team-admin"), ("off", "finance")):
            user = identity.ensure_user(session, name, "t", role)
            ttl = timedelta(seconds=1) if name == "old" else timedelta(days=1)
            row, secrets[name] = identity.create_token(session, user, ttl)
            if name == "rev":
                identity.revoke_token(session, row.id, now)
            if name == "off":
                user.disabled = True
    secrets["unknown"] = identity.TOKEN_PREFIX + "x" * 43
    conn, mark = quickread.connect(ledger.url)
    try:
        later = now + timedelta(seconds=2)  # "old" has expired by then
        for name, secret in secrets.items():
            row = quickread.read_token(conn, mark, identity.hash_token(secret))
            quick = None if row is None else identity.caller_of(row.id, row.expires_at, row.revoked_at, row, later)
            with ledger.read() as session:
                orm = identity.authenticate(session, secret, later)
            assert quick == orm, name
            assert (quick is not None) == (name == "ana"), name
        assert quick is None and quickread.read_token(conn, mark, identity.hash_token(secrets["unknown"])) is None
        ana = quickread.read_token(conn, mark, identity.hash_token(secrets["ana"]))
        assert identity.caller_of(ana.id, ana.expires_at, ana.revoked_at, ana, now).role == "member"
    finally:
        conn.close()


def test_quick_and_orm_show_agree(ledger_url, tmp_path):
    """GET /machines/{id} reads with one quick read; its answer must be the ORM path's, and a
    name finds a live machine the way store.find_machine does."""
    from deepops_infra.errors import NotFoundError
    from deepops_infra.server.app import stored_price
    from deepops_infra.views import show_json

    (tmp_path / "home").mkdir(exist_ok=True)
    ledger = Ledger(ledger_url)
    _seed(ledger)
    with ledger.write() as session:
        m = session.get(Machine, "m-00000002")
        m.manifest, m.validation = {"driver": "550.54"}, {"ok": True, "tflops": 1.5}
        m.provider_refs, m.price_breakdown = {"host_facts": {"big": 1}, "lease": "g0"}, {"per_hour": "2.55"}
        store.add_event(session, m, "transition", "ready", to_status="ready", at=T0 + timedelta(minutes=3))
        store.add_event(session, m, "extend", "extended by 1h", at=T0 + timedelta(hours=1))
        session.get(Machine, "m-00000004").name = "n2"  # a second live "n2": the name is ambiguous
    at = T0 + timedelta(hours=5)
    conn, mark = quickread.connect(ledger.url)
    try:
        for ref in [f"m-0000000{i}" for i in range(6)] + ["n0"]:
            m, spent, events = quickread.find_machine(conn, mark, ref, at)
            quick = show_json(m, spent, events) | stored_price(m)  # what the server answers
            with ledger.read() as session:
                found = store.find_machine(session, ref)
                spent = store.costs(session, [found.id], at)[found.id]
                orm = show_json(found, spent, store.events(session, found.id)) | stored_price(found)
            assert quick == orm, ref
        assert quick["id"] == "m-00000000"  # "n0" by name
        shown = show_json(*quickread.find_machine(conn, mark, "m-00000002", at))
        assert [e["kind"] for e in shown["events"]] == ["transition", "extend"]
        assert shown["provider_refs"] == {"lease": "g0"} and shown["validation"]["tflops"] == 1.5
        for ref in ("n2", "n1", "m-nothing"):  # ambiguous, ended, unknown
            with pytest.raises(NotFoundError) as quick_error:
                quickread.find_machine(conn, mark, ref, at)
            with ledger.read() as session, pytest.raises(NotFoundError) as orm_error:
                store.find_machine(session, ref)
            assert str(quick_error.value) == str(orm_error.value)
    finally:
        conn.close()
