"""The machines service (deepops_infra/service) on both ledgers: fallback offers kept in the
ledger, what each role sees and may ask for, one machine shape for every view, pool and budgets."""

from pathlib import Path
from typing import Any

import pytest

from deepops_infra.config import Settings
from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.ledger.db import Ledger
from deepops_infra.server.identity import Caller
from deepops_infra.service import offers
from deepops_infra.service.access import LOCAL, ForbiddenError
from deepops_infra.service.budgets import BudgetReport, budget_report
from deepops_infra.service.machines import MachineOrder, Machines, get_machine
from deepops_infra.service.pool import HostBusy, add_host, list_hosts, remove_host
from deepops_infra.views import MachineView, machine_json, show_json
from tests.test_server_fixtures import seed_machine

# localhost is the cheaper of two hosts with GPUs: a request for one GPU has a fallback offer
POOL = """hosts:
  - name: localhost
    connection: local
    rates: {gpu_hour: 2, host_hour: 0.1}
    gpus: [{index: 0, model: A100-80GB}, {index: 1, model: A100-80GB}]
  - name: lab-b
    connection: ssh
    address: 192.0.2.7
    rates: {gpu_hour: 3, host_hour: 0.2}
    gpus: [{index: 0, model: A100-80GB}]
"""
CONFIG = "budgets:\n  teams:\n    ml: 100\n    cv: 50\n"
ALICE = Caller("alice", "ml", "member")
BOB = Caller("bob", "ml", "member")
TINA = Caller("tina", "ml", "team-admin")
IVAN = Caller("ivan", "it", "it-admin")
FIONA = Caller("fiona", "finance", "finance")


@pytest.fixture
def service(tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "pool.yaml").write_text(POOL)
    (home / "config.yaml").write_text(CONFIG)
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", ledger_url)
    ledger = Ledger(ledger_url)
    seed_machine(ledger, "m-alice001", "alice", "ml")
    seed_machine(ledger, "m-bob00001", "bob", "ml")
    seed_machine(ledger, "m-carl0001", "carl", "cv", price="3.00")
    yield Machines(Settings.from_env(), ledger)
    ledger.close()


def test_record_keeps_the_fallback_offers_in_the_ledger(service: Any) -> None:
    planned = service.plan(MachineOrder(gpus="A100-80GB:1", ttl="1h"))
    assert [p.host for p in planned.plans] == ["localhost", "lab-b"]
    machine = service.record(planned)
    assert machine.host == "localhost"
    # another process (a server worker) knows them from the ledger alone
    other = Ledger(service.settings.ledger_url)
    with other.read() as session:
        [kept] = offers.kept(session, machine.id)
    other.close()
    assert kept == planned.plans[1]
    assert offers.plan_from_record(offers.plan_record(kept)) == kept
    assert "offers" in [e.kind for e in service.show(machine.id).events]


def test_each_role_sees_what_it_may(service: Any) -> None:
    ids = lambda who, **kw: [m.id for m in service.list_machines(who, **kw)]  # noqa: E731
    assert ids(ALICE) == ["m-alice001"]
    assert ids(ALICE, owner="bob") == []
    assert ids(TINA) == ["m-alice001", "m-bob00001"]
    assert ids(IVAN) == ids(LOCAL) == ["m-alice001", "m-bob00001", "m-carl0001"]
    with pytest.raises(ForbiddenError, match="role finance may not do this"):
        service.list_machines(FIONA)
    assert service.get_machine("m-alice001", ALICE).owner == "alice"
    with pytest.raises(NotFoundError, match="no machine 'm-bob00001' visible to you"):
        service.get_machine("m-bob00001", ALICE)
    with pytest.raises(NotFoundError, match="no machine 'm-carl0001' visible to you"):
        get_machine("m-carl0001", TINA, service.settings, service.ledger)
    with pytest.raises(NotFoundError, match=r"no machine 'm-nope'; see `deepops ls --all`"):
        get_machine("m-nope", LOCAL, service.settings, service.ledger)


def test_a_caller_asks_for_themselves_and_their_team(service: Any) -> None:
    with pytest.raises(ForbiddenError, match="a member requests machines for themselves only"):
        service.plan(MachineOrder(gpus="0", owner="bob"), ALICE)
    with pytest.raises(ForbiddenError, match="you request for team ml only"):
        service.plan(MachineOrder(gpus="0", team="cv"), ALICE)
    with pytest.raises(ForbiddenError, match="people of team ml only"):
        service.plan(MachineOrder(gpus="0", owner="carl"), TINA)
    planned = service.plan(MachineOrder(gpus="0"), ALICE)
    assert (planned.request.owner, planned.request.team) == ("alice", "ml")
    with pytest.raises(NotFoundError, match="no machine 'm-carl0001' visible to you"):
        service.plan(MachineOrder(gpus="0", like="m-carl0001"), ALICE)
    with pytest.raises(UserError, match="m-alice001 ran sha256:test"):  # found, and its pin checked
        service.plan(MachineOrder(like="m-alice001"), ALICE)
    assert planned.summary()["ttl_seconds"] == int(planned.request.ttl.total_seconds())


def test_extend_and_release(service: Any) -> None:
    before = service.get_machine("m-alice001").expires_at
    extended = service.extend("m-alice001", "1h", ALICE)
    assert (extended.expires_at - before).total_seconds() == 3600
    with pytest.raises(NotFoundError):
        service.extend("m-carl0001", "1h", ALICE)
    with pytest.raises(UserError, match="--ttl"):
        service.extend("m-alice001", "soon", ALICE)
    machine = service.record(service.plan(MachineOrder(gpus="0", ttl="1h"), ALICE))  # recorded, never launched
    [target] = service.releasable([machine.id], ALICE)
    released = service.release(target.id, "test")
    assert released.machine["id"] == machine.id and released.machine["ended_at"] is not None
    assert released.cost_line.startswith(f"{machine.id} failed after")
    with pytest.raises(UserError, match="already ended"):
        service.releasable([machine.id], ALICE)


def test_one_machine_shape_for_every_view(service: Any) -> None:
    from deepops_infra.ledger import store

    with service.ledger.read() as session:
        row = store.find_machine(session, "m-alice001")
        spent = store.costs(session, [row.id])[row.id]
        events = store.events(session, row.id)
        expected_list, expected_show = machine_json(row, spent), show_json(row, spent, events)
    [listed] = service.list_machines(ALICE)  # the quick read's row
    assert listed.to_json() | {"cost_usd": None} == expected_list | {"cost_usd": None}
    shown = service.show("m-alice001", ALICE)
    ticking = {"cost_usd": None}  # cost so far grows between reads
    assert shown.detail_json() | ticking == expected_show | ticking
    # the server's JSON (team mode) comes back as the same machine
    assert MachineView.from_json(shown.detail_json()).detail_json() == shown.detail_json()
    assert MachineView.from_json(listed.to_json()).to_json() == listed.to_json()


def test_pool_through_the_service(service: Any) -> None:
    s, ledger = service.settings, service.ledger
    entry = {"name": "lab-c", "connection": "ssh", "address": "192.0.2.9", "rates": {"gpu_hour": 1, "host_hour": 0.1}}
    with pytest.raises(ForbiddenError):
        add_host(s, ledger, entry, ALICE, detect=False)
    added = add_host(s, ledger, entry, IVAN, detect=False)
    assert added["name"] == "lab-c" and added["detected"] is None
    with pytest.raises(UserError, match="already in the pool"):
        add_host(s, ledger, entry, IVAN, detect=False)
    rows = {r["name"]: r for r in list_hosts(s, ledger, IVAN)}
    assert set(rows) == {"localhost", "lab-b", "lab-c"} and rows["lab-b"]["gpu_source"] == "declared"
    seed_machine(ledger, "m-onlabc01", "alice", "ml")
    with ledger.write() as session:
        from deepops_infra.ledger.schema import Machine

        session.get(Machine, "m-onlabc01").host = "lab-c"
    with pytest.raises(HostBusy, match="lab-c has 1 live machine"):
        remove_host(s, ledger, "lab-c", IVAN)
    assert remove_host(s, ledger, "lab-c", IVAN, force=True)["removed"] == "lab-c"
    assert "lab-c" not in {r["name"] for r in list_hosts(s, ledger)}


def test_budgets_through_the_service(service: Any) -> None:
    s, ledger = service.settings, service.ledger
    report = budget_report(s, ledger, None, FIONA)
    assert {(b.kind, b.name) for b in report.budgets} == {("team", "ml"), ("team", "cv")}
    assert [b.name for b in budget_report(s, ledger, None, TINA).budgets] == ["ml"]
    with pytest.raises(ForbiddenError):
        budget_report(s, ledger, None, ALICE)
    again = BudgetReport.from_json(report.to_json())
    assert again.budgets == report.budgets and again.to_json() == report.to_json()
