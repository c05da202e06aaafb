"""`deepops ls` reads without SQLAlchemy; it must agree with the ORM path on both ledgers."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

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
