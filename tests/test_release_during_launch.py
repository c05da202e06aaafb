"""Release during launch (issue 13, item 6): `deepops down` or the server's DELETE on a machine whose
launch is making it (here: caught in its configure play) asks the launch to stop, and the launch
releases it: one teardown, `ended_at` written once and equal to the end of its last usage interval,
and the answer is the machine's real final state."""

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import GpuLease, UsageInterval
from tests.conftest import wait_for
from tests.test_launch_liveness import end_all, play_processes, slow_pool, slow_python
from tests.test_server_fixtures import make_token

pytestmark = pytest.mark.ansible


def released_once(ledger: Ledger, mid: str) -> Any:
    """The machine as the ledger has it, checked: torn down and closed exactly once."""
    with ledger.read() as session:
        row = store.find_machine(session, mid)
        events = store.events(session, mid)
        usage = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == mid)).all()
        held = session.scalars(select(GpuLease).where(GpuLease.machine_id == mid, GpuLease.released_at.is_(None)))
        assert list(held) == []
    closing = [e for e in events if e.to_status == "terminated" or e.kind in ("teardown", "teardown-failed")]
    assert [(e.kind, e.to_status) for e in closing] == [("transition", "terminated")], [
        (e.kind, e.to_status, e.reason) for e in events
    ]
    assert row.status == "terminated" and row.ended_at is not None
    assert usage and all(u.ended_at is not None for u in usage) and max(u.ended_at for u in usage) == row.ended_at
    assert [e.kind for e in events].count("cancel") == 1
    return row


def test_down_during_configuring_stops_the_launch_and_releases_once(deepops, tmp_path):
    python, flag = slow_python(tmp_path)
    deepops.write_pool(slow_pool(python))
    deepops.ledger().close()
    up = deepops.popen("up", "--gpus", "A100-80GB:1", "--ttl", "30m", "--yes", "--json")
    try:
        wait_for(lambda: flag.exists() or up.poll() is not None, 240, "the launch to reach configuring")
        assert up.poll() is None, up.communicate()[1]
        [machine] = deepops.json("ls")
        assert machine["status"] == "configuring"
        down = deepops.run("down", machine["id"], "--yes", "--json", timeout=300)
        assert down.returncode == 0, down.stderr
        [answer] = json.loads(down.stdout)
        _, up_err = up.communicate(timeout=120)  # the launch stopped: it does not go on configuring
    finally:
        up.kill()
        end_all(play_processes(deepops.home))
    assert up.returncode == 1 and "released while it launched" in up_err, up_err
    row = released_once(deepops.ledger(), machine["id"])
    assert answer["status"] == "terminated" and answer["ended_at"] is not None
    assert answer["status_reason"] == row.status_reason and "while it was configuring" in row.status_reason
    assert not (deepops.home / "workspaces" / row.id).exists()
    wait_for(lambda: play_processes(deepops.home) == [], 60, "no play left running")


def test_a_server_delete_during_configuring_stops_the_launch_and_releases_once(tmp_path, ledger_url, monkeypatch):
    from deepops_infra.config import Settings
    from deepops_infra.ledger.liveness import LaunchLocks
    from deepops_infra.server import app as server_app

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    python, flag = slow_python(tmp_path)
    (home / "pool.yaml").write_text(slow_pool(python))
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL", "DEEPOPS_SERVER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", ledger_url)
    ledger = Ledger(ledger_url)
    auth = {"Authorization": f"Bearer {make_token(ledger, 'alice', 'ml', 'member')}"}
    app = server_app.create_app(Settings(home=home))
    server = app.state.server
    try:
        with TestClient(app) as client:
            asked = client.post("/api/v1/machines", json={"gpus": "A100-80GB:1", "ttl": "30m"}, headers=auth)
            assert asked.status_code == 202, asked.text
            mid = asked.json()["id"]
            wait_for(flag.exists, 240, "the launch worker to reach configuring")
            answer = client.delete(f"/api/v1/machines/{mid}", headers=auth)
            assert answer.status_code == 200, answer.text
            machine = answer.json()["machine"]
            assert machine["status"] == "terminated" and machine["ended_at"] is not None
            locks = LaunchLocks.of(server.ledger)  # the server holds it until its worker is done
            wait_for(lambda: not locks.alive(mid), 120, "the launch worker to finish")
            row = released_once(ledger, mid)
            assert machine["status_reason"] == row.status_reason and "released by alice" in row.status_reason
            wait_for(lambda: play_processes(home) == [], 60, "no play left running")
    finally:
        end_all(play_processes(home))
        ledger.close()


def test_a_second_down_while_the_first_waits_gets_the_same_end(sqlite_deepops, tmp_path):
    """Two releases at once: both wait for the one launch to stop; it is torn down and closed once."""
    deepops = sqlite_deepops
    python, flag = slow_python(tmp_path)
    deepops.write_pool(slow_pool(python))
    deepops.ledger().close()
    up = deepops.popen("up", "--gpus", "0", "--ttl", "30m", "--yes")
    try:
        wait_for(lambda: flag.exists() or up.poll() is not None, 240, "the launch to reach configuring")
        assert up.poll() is None, up.communicate()[1]
        [machine] = deepops.json("ls")
        downs = [deepops.popen("down", machine["id"], "--yes", "--json") for _ in range(2)]
        outs = [d.communicate(timeout=300) for d in downs]
        up.communicate(timeout=120)
    finally:
        up.kill()
        end_all(play_processes(deepops.home))
    assert [d.returncode for d in downs] == [0, 0], outs
    ends = {json.loads(out)[0]["ended_at"] for out, _ in outs}
    assert len(ends) == 1 and None not in ends
    with deepops.ledger().read() as session:
        events = store.events(session, machine["id"])
    assert [e.to_status for e in events].count("terminated") == 1
    assert [e.kind for e in events].count("teardown") == 0
