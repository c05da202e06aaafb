"""The reaper and the agent on real on-prem leases on localhost (real plays, real processes):
busy survives, idle is warned then reaped, past-TTL is reaped while busy, the dead-man switch
ends a lease with no control plane, `up`/`down` killed with SIGKILL leave nothing behind after
`reap --once`, and two reapers started together end each machine exactly once."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from deepops_infra.ledger import store
from deepops_infra.ledger.schema import Event, Machine, Notification, UsageInterval
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.ansible

# Small enough for a test, shaped like production: samples every second, 20 s idle timeout.
CONFIG = """
agent:
  interval: 1s
  checkin_timeout: {checkin}
reaper:
  grace: 3s
  setup_timeout: 2s
  metrics_address: 127.0.0.1
"""
# A process that wants two thirds of a core: on a loaded 2-core box (load 10) its fair share still
# stays well over the 10 % threshold, and it leaves the other tests a core.
BURN = (
    "import time\nwhile True:\n    end = time.time() + 0.06\n    while time.time() < end: pass\n    time.sleep(0.03)\n"
)


def lease_pids(machine_id: str) -> list[int]:
    marker = f"DEEPOPS_MACHINE={machine_id}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        with open(f"/proc/{entry}/stat") as s:
                            if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                                pids.append(int(entry))
            except OSError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def up_many(deepops, *argsets: list[str]) -> list[dict]:  # type: ignore[no-untyped-def]
    deepops.ledger().close()  # migrate first: concurrent first opens of a SQLite ledger race
    procs = [deepops.popen("up", "--gpus", "0", "--yes", "--json", *args) for args in argsets]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def machine(deepops, mid: str) -> Machine:  # type: ignore[no-untyped-def]
    with deepops.ledger().read() as session:
        return store.find_machine(session, mid)


def events(deepops, mid: str) -> list[Event]:  # type: ignore[no-untyped-def]
    with deepops.ledger().read() as session:
        return store.events(session, mid)


def test_busy_survives_idle_is_warned_then_reaped_and_ttl_holds_while_busy(sqlite_deepops, webhook):
    deepops = sqlite_deepops
    url, received = webhook
    deepops.write_config(CONFIG.format(checkin="1h") + f"notify:\n  webhook_url: {url}\n")
    busy, idle, expiring = up_many(
        deepops,
        ["--ttl", "30m", "--idle-timeout", "20s", "--name", "busy"],
        ["--ttl", "30m", "--idle-timeout", "20s", "--name", "idle"],
        ["--ttl", "45s", "--idle-timeout", "30m", "--name", "expiring"],
    )
    master, terminal = os.openpty()
    session = subprocess.Popen(  # an open interactive session in the busy lease: a terminal it holds
        [sys.executable, "-m", "deepops_infra", "ssh", busy["id"], "--", "cat"],
        env=deepops.env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    for lease in (busy, expiring):  # CPU in use in both: the TTL must hold anyway
        deepops.run("ssh", lease["id"], "--", "sh", "-c", f"nohup python -c '{BURN}' >/dev/null 2>&1 &", check=True)
    port = free_port()
    reaper = deepops.popen("reap", "--daemon", "--interval", "2s", "--json", "--metrics-port", str(port))
    try:
        wait_for(lambda: machine(deepops, idle["id"]).ended_at, 90, what="the idle lease to be reaped")
        wait_for(lambda: machine(deepops, expiring["id"]).ended_at, 90, what="the expired lease to be reaped")

        def settled() -> str | None:  # the gauges are read at a cycle's start: wait for one after the ends
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
            return text if 'deepops_machines{state="ready"} 1' in text else None

        metrics = wait_for(settled, 90, what="the metrics to show the one lease left")
        status_file = deepops.home / "workspaces" / busy["id"] / ".deepops/agent/status.json"
        # read while the session is still open: its terminal is one of the busy lease's signals
        status = wait_for(
            lambda: (s := json.loads(status_file.read_text()))["signals"]["sessions"].get("count", 0) >= 1 and s,
            60,
            what="the busy lease's agent to see the open session",
        )
    finally:
        reaper.send_signal(signal.SIGTERM)
        out, err = reaper.communicate(timeout=60)
        session.kill()
        session.wait()
        os.close(master)
        os.close(terminal)
    assert reaper.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines() if line.startswith('{"started_at"')]
    done = [(a["machine"], a["action"], a["reason"]) for r in reports for a in r["actions"] if a["outcome"] == "done"]
    assert (idle["id"], "warn", "idle") in done and (idle["id"], "teardown", "idle") in done
    assert (expiring["id"], "warn", "ttl-expired") in done and (expiring["id"], "teardown", "ttl-expired") in done
    assert not [d for d in done if d[0] == busy["id"]]  # never warned, never touched

    # idle: warned a grace (3 s) before its idle timeout, ended once idle for the timeout; everything of it gone
    ended = machine(deepops, idle["id"])
    kinds = [(e.kind, e.to_status) for e in events(deepops, idle["id"])]
    assert ("reaper-warning", None) in kinds and ("transition", "idle") in kinds and ended.status == "terminated"
    warning = next(e for e in events(deepops, idle["id"]) if e.kind == "reaper-warning")
    teardown = next(e for e in events(deepops, idle["id"]) if e.kind == "reaper")
    assert (warning.at - ended.ready_at).total_seconds() >= 17  # idle for the timeout less the grace first
    assert (teardown.at - warning.at).total_seconds() >= 3  # the grace was given
    assert (teardown.at - ended.ready_at).total_seconds() >= 20  # idle for the whole timeout
    assert not (deepops.home / "workspaces" / idle["id"]).exists() and lease_pids(idle["id"]) == []

    # TTL: ended while its CPU was busy, at or after the expiry
    gone = machine(deepops, expiring["id"])
    teardown = next(e for e in events(deepops, expiring["id"]) if e.kind == "reaper")
    assert teardown.at >= gone.expires_at and gone.status == "terminated" and lease_pids(expiring["id"]) == []

    # busy: still ready, its agent saw the CPU, and the reaper checked in with it
    kept = machine(deepops, busy["id"])
    assert kept.status == "ready" and kept.ended_at is None
    cpu_seen = datetime.fromisoformat(status["signals"]["cpu"]["last_active_at"].replace("Z", "+00:00"))
    at = datetime.fromisoformat(status["at"].replace("Z", "+00:00"))
    assert (at - cpu_seen).total_seconds() < 20 and status["signals"]["sessions"]["count"] >= 1
    assert status["checkin_at"] is not None and status["idle"] is False

    # the owner was told, with a Slack-compatible body, once per warning
    texts = [r["text"] for r in received]
    assert len(texts) == 2 and all(t.startswith("deepops: m-") and "deepops extend" in t for t in texts)
    with deepops.ledger().read() as s:
        assert all(n.delivered for n in s.scalars(select(Notification)))
    assert 'deepops_machines{state="ready"} 1' in metrics
    assert 'deepops_reaper_actions_total{action="teardown",reason="idle",outcome="done"} 1' in metrics
    assert "deepops_reaper_cycle_duration_seconds_count" in metrics
    deepops.run("down", busy["id"], "--yes", check=True)
    assert lease_pids(busy["id"]) == []


def test_dead_man_switch_ends_a_lease_whose_control_plane_is_gone(sqlite_deepops):
    deepops = sqlite_deepops
    deepops.write_config(CONFIG.format(checkin="3s"))
    # The idle timeout leaves time for the `deepops ssh` below on a loaded machine: at load 10 one
    # took more than 5 s, and the switch ended the lease under the session that was starting.
    [lease] = up_many(deepops, ["--ttl", "30m", "--idle-timeout", "30s"])
    background = "setsid sleep 600 >/dev/null 2>&1 & echo $!"
    started = deepops.run("ssh", lease["id"], "--", "sh", "-c", background, check=True)
    sleeper = int(started.stdout.strip())
    status_file = deepops.home / "workspaces" / lease["id"] / ".deepops/agent/status.json"
    # no reaper runs: idle 30 s and no check-in for 3 s, and the agent ends the lease by itself
    status = wait_for(
        lambda: (s := json.loads(status_file.read_text())).get("ended") and s, 180, what="the dead-man switch"
    )
    assert "no control-plane check-in" in status["ended"]["reason"]
    wait_for(lambda: lease_pids(lease["id"]) == [], 15, what="the lease's processes to end")
    assert not alive(sleeper)
    assert machine(deepops, lease["id"]).ended_at is None  # the ledger learns it from the reaper
    out = deepops.run("reap", "--once", "--json", check=True)
    [action] = json.loads(out.stdout)["actions"]
    assert action["action"] == "teardown" and action["reason"] == "agent-ended" and action["outcome"] == "done"
    ended = machine(deepops, lease["id"])
    assert ended.status == "terminated" and not (deepops.home / "workspaces" / lease["id"]).exists()


def _kill_at(deepops, args: list[str], status: str, target: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Start `deepops ARGS`, SIGKILL its whole process group once the machine (a new one, or
    `target`) reaches `status`."""
    ledger = deepops.ledger()  # created (and migrated) here, never by two processes at once
    with ledger.read() as session:
        before = set(session.scalars(select(Machine.id)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepops_infra", *args],
        env=deepops.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def reached() -> str | None:
        with ledger.read() as session:
            for mid, st in session.execute(select(Machine.id, Machine.status)):
                if (mid == target if target else mid not in before) and st == status:
                    return mid
        return None

    try:
        mid = wait_for(reached, 120, every=0.05, what=f"a machine {status}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    return mid


def _consistent(deepops, mid: str) -> Machine:  # type: ignore[no-untyped-def]
    with deepops.ledger().read() as session:
        m = store.find_machine(session, mid)
        usage = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == mid)).all()
    assert m.ended_at is not None and m.status in ("failed", "terminated")
    assert all(u.ended_at is not None and u.ended_at <= m.ended_at for u in usage)
    assert not (deepops.home / "workspaces" / mid).exists() and lease_pids(mid) == []
    return m


def test_up_and_down_killed_at_each_step_leak_nothing_after_reap_once(sqlite_deepops):
    deepops = sqlite_deepops
    deepops.write_config(CONFIG.format(checkin="1h"))
    up = ["up", "--gpus", "0", "--ttl", "30m", "--yes"]
    provisioning = _kill_at(deepops, up, "provisioning")
    configuring = _kill_at(deepops, [*up, "--idle-timeout", "20m"], "configuring")
    [ready] = up_many(deepops, ["--ttl", "30m"])
    terminating = _kill_at(deepops, ["down", ready["id"], "--yes"], "terminating", target=ready["id"])
    assert terminating == ready["id"]
    time.sleep(2.5)  # setup_timeout 2s: the killed `down` is now known dead (the killed `up`s by their locks)
    report = json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)
    acted = {a["machine"]: (a["action"], a["reason"], a["outcome"]) for a in report["actions"]}
    assert acted == {
        provisioning: ("fail", "launcher-dead", "done"),
        configuring: ("fail", "launcher-dead", "done"),
        terminating: ("teardown", "teardown-stuck", "done"),
    }
    assert _consistent(deepops, provisioning).status == "failed"
    assert _consistent(deepops, configuring).status == "failed"
    assert _consistent(deepops, terminating).status == "terminated"
    again = json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)
    assert again["actions"] == [] and again["errors"] == [] and again["resources"] == {}
    assert list((deepops.home / "workspaces").glob("m-*")) == []


def test_two_reapers_started_together_end_each_machine_once(sqlite_deepops):
    deepops = sqlite_deepops
    deepops.write_config(CONFIG.format(checkin="1h").replace("grace: 3s", "grace: 1s"))
    leases = up_many(deepops, ["--ttl", "5s"], ["--ttl", "5s"])
    ids = sorted(lease["id"] for lease in leases)
    time.sleep(5)
    first = json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)
    assert sorted(a["machine"] for a in first["actions"] if a["action"] == "warn") == ids
    time.sleep(1.5)
    procs = [deepops.popen("reap", "--once", "--json") for _ in range(2)]
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    done = sorted(a["machine"] for r in reports for a in r["actions"] if a["outcome"] == "done")
    assert done == ids  # each machine ended by exactly one of the two
    for mid in ids:
        kinds = [e.kind for e in events(deepops, mid)]
        assert kinds.count("reaper") == 1 and machine(deepops, mid).status == "terminated"
        assert [e.to_status for e in events(deepops, mid)].count("terminated") == 1
