"""The whole lifecycle through the CLI with real ansible-runner plays: localhost and a real sshd."""

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from deepops_infra.ledger.schema import Event, GpuLease, Machine, UsageInterval
from tests.conftest import declared_pool

pytestmark = pytest.mark.ansible

LEASE_KEYS = {"id", "status", "cloud", "host", "owner", "expires_at"}


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_ssh_down_on_localhost(deepops):
    machine = deepops.json(
        "up",
        "--cloud",
        "onprem",
        "--gpus",
        "0",
        "--ttl",
        "30m",
        "--idle-timeout",
        "10m",
        "--yes",
        "--team",
        "ml",
        "--project",
        "demo",
    )
    assert machine.keys() >= LEASE_KEYS
    assert machine["status"] == "ready" and machine["cloud"] == "onprem" and machine["host"] == "localhost"
    assert machine["owner"] == deepops.env["USER"]
    workspace = deepops.home / "workspaces" / machine["id"]
    assert workspace.is_dir() and oct(workspace.stat().st_mode)[-3:] == "700"

    listed = deepops.json("ls")
    assert [m["id"] for m in listed] == [machine["id"]] and listed[0]["status"] == "ready"

    probe = deepops.run(
        "ssh",
        machine["id"],
        "--",
        "python",
        "-c",
        "import os, sys, packaging; print(os.environ['CUDA_VISIBLE_DEVICES'] == '', "
        "sys.prefix, packaging.__version__, os.getcwd())",
        check=True,
    )
    hidden, prefix, version, cwd = probe.stdout.split()
    assert hidden == "True" and prefix == str(workspace / "env") and version == "24.2" and cwd == str(workspace)
    assert deepops.run("ssh", machine["id"], "--", "sh", "-c", "exit 7").returncode == 7

    # A process left running in the lease must not survive the release.
    started = deepops.run(
        "ssh", machine["id"], "--", "sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!", check=True
    )
    sleeper = int(started.stdout.strip())
    assert _pid_alive(sleeper)

    shown = deepops.json("show", machine["id"])
    assert shown["manifest"]["packages"]["packaging"] == "24.2"
    assert shown["image_pin"].startswith("sha256:") and shown["validation"]["passed"] is True
    assert [e["to"] for e in shown["events"] if e["kind"] == "transition"] == [
        "requested",
        "provisioning",
        "configuring",
        "validating",
        "ready",
    ]

    down = deepops.run("down", machine["id"], "--yes", check=True)
    assert f"{machine['id']} terminated after" in down.stderr and "$" in down.stderr
    deadline = time.monotonic() + 5
    while _pid_alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(sleeper)
    assert not workspace.exists()
    assert deepops.json("ls") == []
    ended = deepops.json("ls", "--all")[0]
    assert ended["status"] == "terminated" and ended["ended_at"] and float(ended["cost_usd"]) > 0

    with deepops.ledger().read() as session:
        intervals = session.scalars(select(UsageInterval)).all()
        assert len(intervals) == 1 and intervals[0].ended_at is not None
        assert session.scalar(select(Machine.price_per_hour)) == intervals[0].price_per_hour


def test_lifecycle_on_an_ssh_host(deepops, sshd, tmp_path):
    remote_root = tmp_path / "remote-workspaces"
    deepops.write_pool(f"""
hosts:
  - name: sshbox
    connection: ssh
    address: 127.0.0.1
    port: {sshd.port}
    user: {sshd.user}
    key: {sshd.key}
    workspace_root: {remote_root}
    python: /usr/bin/python3
    labels: {{region: lab-a}}
    rates: {{gpu_hour: 2.5, host_hour: 0.3}}
""")
    machine = deepops.json("up", "--host", "sshbox", "--gpus", "0", "--ttl", "1h", "--yes")
    assert machine["host"] == "sshbox" and machine["status"] == "ready" and machine["region"] == "lab-a"
    assert machine["price_per_hour"] == "0.3"
    out = deepops.run("ssh", machine["id"], "--", "sh", "-c", 'echo "$DEEPOPS_MACHINE $SSH_CONNECTION"', check=True)
    assert out.stdout.split()[0] == machine["id"] and "127.0.0.1" in out.stdout
    assert (remote_root / machine["id"] / "env" / "bin" / "python").exists()
    assert (deepops.home / "known_hosts").read_text().strip()  # host key remembered, not ignored
    deepops.run("down", machine["id"], "--yes", check=True)
    assert not (remote_root / machine["id"]).exists()


def test_unreachable_host_ends_failed_and_frees_the_lease(deepops, tmp_path):
    from tests.conftest import free_port

    deepops.write_pool(f"""
include_localhost: false
hosts:
  - name: gone
    address: 127.0.0.1
    port: {free_port()}
    key: {tmp_path / "nokey"}
    rates: {{gpu_hour: 1, host_hour: 0.1}}
    gpus:
      - {{index: 0, model: A100-80GB}}
""")
    proc = deepops.run("up", "--gpus", "A100-80GB:1", "--ttl", "1h", "--yes", "--json")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 or "error" in proc.stderr.splitlines()[-1]
    assert "unreachable" in proc.stderr.splitlines()[-1]
    [machine] = deepops.json("ls", "--all")
    assert machine["status"] == "failed" and "unreachable" in machine["status_reason"]
    assert machine["ended_at"] is not None
    with deepops.ledger().read() as session:
        assert session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))).all() == []


def test_configure_failure_tears_the_lease_down(deepops, tmp_path):
    deepops.write_pool("""
hosts:
  - name: localhost
    connection: local
    python: /nonexistent/python3
    rates: {gpu_hour: 1, host_hour: 0.1}
""")
    proc = deepops.run("up", "--gpus", "0", "--ttl", "1h", "--yes")
    assert proc.returncode == 1 and "configuring cpu-minimal on localhost failed" in proc.stderr
    [machine] = deepops.json("ls", "--all")
    assert machine["status"] == "failed" and machine["ended_at"]
    assert not (deepops.home / "workspaces" / machine["id"]).exists()
    with deepops.ledger().read() as session:
        kinds = [e.kind for e in session.scalars(select(Event).order_by(Event.id))]
    assert kinds[-1] == "teardown"


def test_two_up_race_for_the_last_gpu(deepops):
    """Declared GPU indexes: two `up` at the same moment for the one free GPU, exactly one wins."""
    deepops.write_pool(declared_pool(2))
    first = deepops.json("up", "--gpus", "A100:1", "--ttl", "1h", "--yes")
    assert first["gpu_indexes"] == [0]
    racers = [deepops.popen("up", "--gpus", "A100:1", "--ttl", "1h", "--yes", "--json") for _ in range(2)]
    results = [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in racers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "every matching GPU is leased" in loser
    live = deepops.json("ls")
    assert sorted(m["gpu_indexes"][0] for m in live) == [0, 1]
    winner = next(m for m in live if m["id"] != first["id"])
    env = deepops.run("ssh", winner["id"], "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES", check=True)
    assert env.stdout.strip() == "1"
    with deepops.ledger().read() as session:
        assert session.scalar(select(Machine).where(Machine.id.notin_([m["id"] for m in live]))) is None
    deepops.run("down", first["id"], winner["id"], "--yes", check=True)
    with deepops.ledger().read() as session:
        assert session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))).all() == []


def test_detected_gpus_and_like(sqlite_deepops, tmp_path):
    """GPUs come from nvidia-smi on the host (a stand-in binary here); --like repeats pin, GPUs, host."""
    deepops = sqlite_deepops
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho '0, GPU-aaa, NVIDIA A100-SXM4-80GB, 81920, 550.54.15, 0, 0'\n"
        "echo '1, GPU-bbb, NVIDIA A100-SXM4-80GB, 81920, 550.54.15, 37, 2048'\n"
    )
    smi.chmod(0o755)
    deepops.env["PATH"] = f"{fake}{os.pathsep}{deepops.env['PATH']}"
    pool = deepops.json("pool", "ls", "--detect")
    assert [g["index"] for g in pool[0]["gpus_offered"]] == [0, 1]
    machine = deepops.json("up", "--gpus", "A100-80GB:2", "--ttl", "2h", "--yes")
    assert machine["gpu_indexes"] == [0, 1] and machine["accelerator"] == "A100-80GB"
    assert machine["price_per_hour"] == "2.05"  # localhost default: host 0.05 + 2 x 1.00
    shown = deepops.json("show", machine["id"])
    assert shown["manifest"]["driver_version"] == "550.54.15"
    env = deepops.run("ssh", machine["id"], "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES", check=True)
    assert env.stdout.strip() == "0,1"
    too_many = deepops.run("up", "--gpus", "A100:1", "--ttl", "1h", "--yes")
    assert too_many.returncode == 2 and "every matching GPU is leased" in too_many.stderr
    deepops.run("down", machine["id"], "--yes", check=True)
    again = deepops.json("up", "--like", machine["id"], "--ttl", "1h", "--yes")
    same = ("gpus", "host", "image_pin")
    assert [again[k] for k in same] == [machine[k] for k in same]
    deepops.run("down", again["id"], "--yes", check=True)


def test_run_executes_and_releases(sqlite_deepops):
    proc = sqlite_deepops.run(
        "run",
        "--gpus",
        "0",
        "--ttl",
        "30m",
        "--",
        "python",
        "-c",
        "import sys; print('hello from', sys.prefix); sys.exit(3)",
    )
    assert proc.returncode == 3
    assert "hello from" in proc.stdout and "/workspaces/m-" in proc.stdout
    assert "terminated after" in proc.stderr
    assert sqlite_deepops.json("ls") == []


def test_down_during_interrupt_marks_failed(sqlite_deepops):
    """Ctrl-C during `up` ends the machine `failed` and tears it down (no lease is left behind)."""
    proc = sqlite_deepops.popen("up", "--gpus", "0", "--ttl", "30m", "--yes")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((sqlite_deepops.home / "workspaces").glob("m-*")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    [machine] = sqlite_deepops.json("ls", "--all")
    assert machine["status"] == "failed" and machine["status_reason"] == "interrupted" and machine["ended_at"]
    assert list(Path(sqlite_deepops.home / "workspaces").glob("m-*")) == []


def test_down_ends_a_machine_that_never_got_provisioned(deepops, monkeypatch):
    """A crash right after the ledger write leaves a `requested` row holding GPUs; `down` ends it."""
    from deepops_infra.config import Settings
    from deepops_infra.intake import Options, build_request
    from deepops_infra.lifecycle import Lifecycle
    from deepops_infra.progress import QuietProgress
    from deepops_infra.providers.onprem.provider import OnpremProvider

    deepops.write_pool(declared_pool(1))
    for var in ("DEEPOPS_HOME", "DEEPOPS_LEDGER_URL"):
        monkeypatch.setenv(var, deepops.env[var])
    settings = Settings.from_env()
    ledger = deepops.ledger()
    provider = OnpremProvider(settings, ledger)
    request, image = build_request(settings, Options(gpus="A100:1", ttl="1h"))
    machine = Lifecycle(settings, ledger, provider, QuietProgress()).record(
        request, image, provider.plan(request, image)
    )
    assert deepops.run("up", "--gpus", "A100:1", "--ttl", "1h", "--yes").returncode == 2  # the GPU is held
    deepops.run("down", machine.id, "--yes", check=True)
    [ended] = deepops.json("ls", "--all")
    assert ended["status"] == "failed" and "before it was provisioned" in ended["status_reason"] and ended["ended_at"]
    with ledger.read() as session:
        assert session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))).all() == []
