"""deepops-agent on this machine, for real: processes carrying DEEPOPS_MACHINE, a pseudo-terminal,
a Jupyter API served over HTTP, a fake nvidia-smi, the dead-man switch ending real processes,
the command line, and the CloudWatch sink against a moto server."""

import fcntl
import json
import os
import subprocess
import sys
import termios
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepops_infra.agent import deepops_agent as da
from deepops_infra.agent.status import from_status

AGENT = Path(da.__file__)


def alive(pid: int) -> bool:
    return da.alive(pid)


@pytest.fixture
def machine(tmp_path):
    """A lease-like setup: a machine ID, a state dir, and a helper starting processes of the lease."""
    mid = f"m-{uuid.uuid4().hex[:8]}"
    workspace = tmp_path / mid
    (workspace / ".deepops").mkdir(parents=True)
    key = uuid.uuid4().hex
    marker = {"installation_id": "inst-test", "machine_id": mid, "created_at": "2026-12-03T00:00:00Z", "lease_key": key}
    (workspace / ".deepops" / "lease.json").write_text(json.dumps(marker))
    state = tmp_path / "agent"
    state.mkdir()
    procs: list[subprocess.Popen] = []

    def start(*argv: str, lease: bool = True, **kw) -> subprocess.Popen:
        """A process of the lease (started through `deepops ssh`: it carries the lease's key), or
        with lease=False one that only claims to be (DEEPOPS_MACHINE, which anyone can set)."""
        mine = {"DEEPOPS_LEASE_KEY": key} if lease else {}
        env = {**os.environ, "DEEPOPS_MACHINE": mid, **mine, **kw.pop("env", {})}
        proc = subprocess.Popen(list(argv), env=env, **kw)
        procs.append(proc)
        return proc

    def config(**values) -> dict:
        return {
            **da.DEFAULTS,
            "machine_id": mid,
            "workspace": str(workspace),
            "state_dir": str(state),
            "gpu_indexes": [],
            "interval_seconds": 1,
            "idle_timeout_seconds": 3,
            "checkin_timeout_seconds": 3600,
            **values,
        }

    yield SimpleNamespace(mid=mid, state=state, start=start, config=config, workspace=workspace)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cpu_of_the_lease_processes_keeps_it_active_and_idle_needs_the_whole_timeout(machine):
    agent = da.Agent(machine.config(idle_timeout_seconds=2))
    sleeper = machine.start(sys.executable, "-c", "import time; time.sleep(60)")
    first = agent.step()
    assert first["idle"] is False and first["signals"]["gpu"]["state"] == "absent"
    time.sleep(0.5)
    quiet = agent.step()
    assert quiet["signals"]["cpu"]["state"] == "idle" and quiet["signals"]["cpu"]["processes"] == 1
    assert quiet["idle"] is False  # idle for less than the timeout
    busy = machine.start(sys.executable, "-c", "while True: pass")
    time.sleep(1.0)
    hot = agent.step()
    assert hot["signals"]["cpu"]["state"] == "active" and hot["signals"]["cpu"]["percent"] >= 10  # a loaded box
    busy.kill()
    busy.wait()
    agent.step()
    time.sleep(2.1)
    cold = agent.step()
    assert cold["idle"] is True and cold["idle_seconds"] >= 2.0
    assert cold["last_active_at"] == hot["at"]  # the last sample that saw CPU in use
    on_disk = json.loads((machine.state / "status.json").read_text())
    assert on_disk["idle"] is True and oct((machine.state / "status.json").stat().st_mode)[-3:] == "600"
    assert on_disk["window"]["samples"] == 5 and 0 < on_disk["window"]["active_fraction"] < 1
    assert sleeper.poll() is None  # reporting only: the dead-man switch needs a missing control plane


def test_an_interactive_terminal_of_the_lease_is_a_session(machine):
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    machine.start("cat", stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_terminal)
    os.write(master, b"hello\n")
    time.sleep(0.3)
    status = da.Agent(machine.config()).step()
    sessions = status["signals"]["sessions"]
    tty = os.ttyname(slave)
    st = os.stat(tty)
    assert sessions["count"] == 1 and sessions["state"] == "idle"
    seen = datetime.fromisoformat(sessions["last_active_at"].replace("Z", "+00:00"))
    assert seen.timestamp() == pytest.approx(max(st.st_atime, st.st_mtime), abs=1e-3)
    os.close(master)
    os.close(slave)


@pytest.fixture
def jupyter_api():
    api = {"kernels": [], "fail": False, "auth": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            api["auth"].append(self.headers.get("Authorization"))
            if api["fail"]:
                self.send_error(500)
                return
            body = json.dumps(api["kernels"] if self.path.startswith("/api/kernels") else []).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", api
    server.shutdown()


def test_jupyter_kernels_busy_idle_and_unreadable(machine, jupyter_api, tmp_path):
    url, api = jupyter_api
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    server = machine.start(
        sys.executable, "-c", "import time; time.sleep(60)", "jupyter-lab", env={"JUPYTER_RUNTIME_DIR": str(runtime)}
    )
    (runtime / f"jpserver-{server.pid}.json").write_text(json.dumps({"url": url, "token": "s3cret", "pid": server.pid}))
    # a server of someone else (not a process of this lease) is never asked
    (runtime / "jpserver-1.json").write_text(json.dumps({"url": "http://127.0.0.1:9/", "token": "x", "pid": 1}))
    agent = da.Agent(machine.config())
    ten_min_ago = "2026-11-21T11:50:00.123456Z"
    api["kernels"] = [{"id": "k1", "execution_state": "idle", "last_activity": ten_min_ago}]
    idle = agent.step()["signals"]["jupyter"]
    assert idle == {"state": "idle", "kernels": 1, "servers": 1, "last_active_at": "2026-11-21T11:50:00.123456Z"}
    assert set(api["auth"]) == {"token s3cret"}
    api["kernels"].append({"id": "k2", "execution_state": "busy", "last_activity": ten_min_ago})
    assert agent.step()["signals"]["jupyter"]["state"] == "active"
    api["fail"] = True
    status = agent.step()
    assert status["signals"]["jupyter"]["state"] == "unreadable" and status["idle"] is False


def test_gpus_from_nvidia_smi_only_the_leased_ones_and_unreadable_counts_as_active(machine, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 37, 2303, 23034'\necho '1, 0, 1000, 20000'\n")
    smi.chmod(0o755)
    agent = da.Agent(machine.config(nvidia_smi=str(smi), gpu_indexes=[1], idle_timeout_seconds=0.5))
    agent.nvml_failed = True  # no NVML library here; the fallback is what is tested
    status = agent.step()
    assert status["signals"]["gpu"] == {
        "state": "idle",
        "gpus": [{"index": 1, "util": 0.0, "mem": 5.0}],
        "last_active_at": None,
    }
    time.sleep(0.6)
    assert agent.step()["idle"] is True
    busy = da.Agent(machine.config(nvidia_smi=str(smi), gpu_indexes=[0]))
    busy.nvml_failed = True
    assert busy.step()["signals"]["gpu"]["state"] == "active"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    broken = da.Agent(machine.config(nvidia_smi=str(smi), gpu_indexes=[0], idle_timeout_seconds=0.1))
    broken.nvml_failed = True
    time.sleep(0.2)
    status = broken.step()
    assert status["signals"]["gpu"]["state"] == "unreadable" and status["idle"] is False
    missing = da.Agent(machine.config(nvidia_smi=str(tmp_path / "absent"), gpu_indexes=[0]))
    missing.nvml_failed = True
    assert missing.step()["signals"]["gpu"]["state"] == "unreadable"  # GPUs leased but unreadable


def test_touch_marks_the_machine_in_use(machine):
    agent = da.Agent(machine.config(idle_timeout_seconds=0.5))
    agent.step()
    time.sleep(0.6)
    assert agent.step()["idle"] is True
    assert da.main(["--state-dir", str(machine.state), "touch"]) == 0
    status = agent.step()
    assert status["idle"] is False and status["signals"]["user"]["state"] == "idle"


def test_dead_man_switch_ends_the_lease_when_idle_and_the_control_plane_is_gone(machine):
    lease = machine.start(sys.executable, "-c", "import time; time.sleep(60)")
    stubborn = machine.start(
        sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    )
    inside = machine.start(sys.executable, "-c", "import time; time.sleep(60)", lease=False, cwd=machine.workspace)
    foreign = machine.start(sys.executable, "-c", "import time; time.sleep(60)", lease=False)  # a forged variable
    agent = da.Agent(machine.config(idle_timeout_seconds=0.5, checkin_timeout_seconds=5, kill_grace_seconds=0.5))
    # a recent check-in holds the switch back even when idle
    (machine.state / "checkin.json").write_text(json.dumps({"at": datetime.now(UTC).isoformat()}))
    time.sleep(0.7)
    agent.step()
    status = agent.step()
    assert status["idle"] is True and status["deadman"]["reason"] is None and lease.poll() is None
    (machine.state / "checkin.json").write_text(
        json.dumps({"at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()})
    )
    status = agent.step()
    assert status["ended"]["by"] == "dead-man switch" and "no control-plane check-in" in status["ended"]["reason"]
    assert lease.wait(timeout=5) == -15 and stubborn.wait(timeout=5) == -9
    assert inside.wait(timeout=5) == -15  # inside the workspace: the lease's
    assert foreign.poll() is None  # DEEPOPS_MACHINE alone proves nothing: never signalled
    assert json.loads((machine.state / "status.json").read_text())["ended"] == status["ended"]
    util = from_status((machine.state / "status.json").read_text())
    assert util.ended_by_agent == status["ended"]["reason"] and util.active is False


def test_dead_man_switch_holds_the_ttl_even_when_busy(machine, tmp_path):
    busy = machine.start(sys.executable, "-c", "while True: pass")
    marker = tmp_path / "shutdown-ran"
    expired = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    agent = da.Agent(machine.config(mode="onprem", expires_at=expired, grace_seconds=10, kill_grace_seconds=1))
    status = agent.step()
    assert status["ended"]["reason"].startswith("expired at ") and busy.wait(timeout=5) == -15
    # cloud: the switch runs the shutdown command (AWS terminates instances on shutdown)
    cloud = da.Agent(
        machine.config(mode="cloud", expires_at=expired, grace_seconds=10, shutdown_command=["touch", str(marker)])
    )
    assert cloud.step()["ended"] and marker.exists()
    # the control plane's check-in carries the extended expiry: nothing ends
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    (machine.state / "checkin.json").write_text(json.dumps({"at": datetime.now(UTC).isoformat(), "expires_at": later}))
    marker.unlink()
    again = da.Agent(machine.config(mode="cloud", expires_at=expired, shutdown_command=["touch", str(marker)]))
    assert again.step()["ended"] is None and not marker.exists()


def test_command_line_start_status_stop_and_exit_with_the_workspace(machine, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    path = machine.state / "config.json"
    path.write_text(
        json.dumps({"machine_id": machine.mid, "workspace": str(workspace), "interval_seconds": 1, "gpu_indexes": []})
    )
    run = [sys.executable, str(AGENT), "--config", str(path)]
    started = json.loads(subprocess.run([*run, "start"], capture_output=True, text=True, check=True).stdout)
    assert started["started"] is True
    again = json.loads(subprocess.run([*run, "start"], capture_output=True, text=True, check=True).stdout)
    assert again == {"started": False, "pid": started["pid"]}  # one agent per lease
    with open(f"/proc/{started['pid']}/environ", "rb") as f:
        assert f"DEEPOPS_MACHINE={machine.mid}".encode() in f.read().split(b"\0")  # released with the lease
    deadline = time.monotonic() + 10
    while not (machine.state / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    shown = subprocess.run([*run, "status"], capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["machine_id"] == machine.mid
    assert oct((machine.state / "agent.log").stat().st_mode)[-3:] == "600"
    workspace.rmdir()  # released: the agent stops by itself
    deadline = time.monotonic() + 10
    while alive(started["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(started["pid"])
    assert "the workspace is gone" in (machine.state / "agent.log").read_text()
    missing = subprocess.run(
        [sys.executable, str(AGENT), "--state-dir", str(tmp_path), "status"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no status yet" in missing.stderr


def test_stale_or_missing_status_counts_as_active():
    assert from_status(None).active is None
    assert from_status("{not json").active is None
    old = json.dumps({"at": "2026-01-01T00:00:00Z", "idle": True, "interval_seconds": 5})
    assert from_status(old).active is None and "stale" in from_status(old).signals["error"]
    now = datetime.now(UTC).isoformat()
    fresh = json.dumps(
        {"at": now, "idle": True, "last_active_at": now, "signals": {"gpu": {"gpus": [{"util": 3, "mem": 9}]}}}
    )
    util = from_status(fresh)
    assert util.active is False and util.gpu_percent == [3.0] and util.gpu_memory_percent == [9.0]


def test_cloudwatch_sink_publishes_to_the_metric_service(machine, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        sink = {"type": "cloudwatch", "namespace": "DeepOps", "region": "us-east-1", "endpoint_url": endpoint}
        agent = da.Agent(machine.config(sinks=[sink], publish_interval_seconds=0))
        agent.step()
        cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=endpoint)
        metrics = cw.list_metrics(Namespace="DeepOps")["Metrics"]
        assert {m["MetricName"] for m in metrics} == {"Active", "IdleSeconds"}  # no GPU here: no GPU metrics
        assert all(m["Dimensions"] == [{"Name": "MachineId", "Value": machine.mid}] for m in metrics)
    finally:
        server.stop()


def test_the_agent_file_is_stdlib_only_and_parses_as_python_3_8():
    """It runs with whatever Python the host has: no deepops_infra imports, no newer grammar."""
    import ast

    tree = ast.parse(AGENT.read_text(), feature_version=(3, 8))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"boto3"} <= set(sys.stdlib_module_names)  # boto3: only for the CloudWatch sink


@pytest.mark.ansible
def test_the_agents_expiry_is_the_ledgers_after_ready_and_after_extend(sqlite_deepops):
    """Issue 13, item 7: the TTL counts from ready, and the agent's dead-man switch ends the lease
    at the ledger's expiry (plus its grace), not at an expiry guessed when configuring began; an
    extend moves it at once, with no reaper running."""
    from deepops_infra.ledger import store

    deepops = sqlite_deepops
    deepops.write_config("agent:\n  interval: 1s\n  grace: 10m\n")
    lease = deepops.json("up", "--gpus", "0", "--ttl", "30m", "--yes")
    status_file = deepops.home / "workspaces" / lease["id"] / ".deepops" / "agent" / "status.json"

    def ledger_expiry() -> datetime:
        with deepops.ledger().read() as session:
            return store.find_machine(session, lease["id"]).expires_at

    def agent_sees(expiry: datetime) -> dict | None:
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return None
        return status if da.parse_time(status.get("expires_at")) == expiry else None

    def wait(expiry: datetime) -> dict:
        deadline = time.monotonic() + 60
        while (status := agent_sees(expiry)) is None:
            assert time.monotonic() < deadline, f"the agent's expiry is not {expiry}: {status_file.read_text()}"
            time.sleep(0.5)
        return status

    try:
        first = ledger_expiry()
        status = wait(first)
        assert da.parse_time(status["deadman"]["hard_stop_at"]) == first + timedelta(minutes=10)
        deepops.run("extend", lease["id"], "--ttl", "2h", check=True)
        later = ledger_expiry()
        assert later == first + timedelta(hours=2)
        wait(later)
    finally:
        deepops.run("down", lease["id"], "--yes")


def test_a_running_job_keeps_the_machine_active_and_an_ended_one_does_not(machine):
    """`deepops exec` jobs: a sleeping job (no CPU, no terminal) is activity while it runs."""
    from deepops_infra.jobs import new_job_id, start_command

    agent = da.Agent(machine.config(idle_timeout_seconds=1))
    assert agent.step()["signals"]["jobs"]["state"] == "absent"
    job = new_job_id()
    env = {**os.environ, "DEEPOPS_WORKSPACE": str(machine.workspace), "DEEPOPS_MACHINE": machine.mid}
    env["DEEPOPS_LEASE_KEY"] = json.loads((machine.workspace / ".deepops" / "lease.json").read_text())["lease_key"]
    gate = machine.workspace / "go"
    subprocess.run(start_command(job, f"while [ ! -f {gate} ]; do sleep 0.1; done"), env=env, check=True)
    time.sleep(1.5)
    busy = agent.step()
    assert busy["signals"]["jobs"] == {
        "state": "active",
        "running": [job],
        "last_active_at": busy["signals"]["jobs"]["last_active_at"],
    }
    assert busy["idle"] is False
    gate.touch()
    deadline = time.monotonic() + 60
    while not (machine.workspace / ".deepops" / "jobs" / job / "exit").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.step()["signals"]["jobs"]["state"] == "idle"
