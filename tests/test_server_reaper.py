"""The reaper loop inside `deepops serve`, beside a separate reaper: the machine past its TTL is
warned, then ended once (one terminated transition), whichever of the two acted."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.test_server_fixtures import seed_machine, start_server, stop_server

CONFIG = "server:\n  reaper_interval: 1s\nreaper:\n  grace: 1s\n  interval: 1s\n"


@pytest.mark.ansible
def test_server_reaper_loop_ends_an_expired_machine_once(tmp_path: Path, ledger_url: str) -> None:
    s = start_server(tmp_path, ledger_url, config=CONFIG, reaper=True)
    other = None
    try:
        ledger = s.ledger()
        seed_machine(ledger, "m-living01", "bob", "ml", hours_ago=1)
        with s.client("alice") as c:  # a real lease on localhost, through the server
            mid = c.post("/machines", json={"gpus": "0", "ttl": "1h"}).json()["id"]
            deadline = time.monotonic() + 240
            while c.get(f"/machines/{mid}").json()["status"] != "ready" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert c.get(f"/machines/{mid}").json()["status"] == "ready", s.log()[-3000:]
        with ledger.write() as session:  # its hour has passed
            session.execute(text("UPDATE machines SET expires_at = created_at WHERE id = :id"), {"id": mid})
        other = subprocess.Popen(
            [sys.executable, "-m", "deepops_infra", "reap", "--daemon", "--interval", "1s"],
            env=s.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            with s.client("ivan") as c:
                if c.get(f"/machines/{mid}").json()["status"] == "terminated":
                    break
            time.sleep(0.5)
        with s.client("ivan") as c:
            assert c.get(f"/machines/{mid}").json()["status"] == "terminated", s.log()[-3000:]
            assert c.get("/machines/m-living01").json()["status"] == "ready"
        time.sleep(2)  # both reapers get another cycle: nothing may act twice
        with ledger.read() as session:
            ended = session.execute(
                text("SELECT count(*) FROM events WHERE machine_id = :id AND to_status = 'terminated'"),
                {"id": mid},
            ).scalar()
            warned = session.execute(
                text("SELECT count(*) FROM notifications WHERE machine_id = :id"),
                {"id": mid},
            ).scalar()
        ledger.close()
        assert ended == 1 and warned == 1
    finally:
        if other is not None:
            other.terminate()
            other.wait(timeout=30)
        stop_server(s)
