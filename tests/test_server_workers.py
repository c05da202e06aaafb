"""The team server as a process: a release is answered while every launch worker is busy (a queue
of slow launches must not hold a person's `deepops down` for minutes), and the systemd unit's own
command serves and stops cleanly on SIGTERM."""

import shlex
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.conftest import free_port
from tests.test_server_fixtures import make_token, seed_machine

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "deepops-serve.service"


def hold_until(flag: str, deaf: bool = False) -> str:
    """A launch worker's stand-in for a slow play: busy until the test lets it go; `deaf` ignores
    SIGTERM as a worker that ran ansible-runner does."""
    if deaf:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while not Path(flag).exists():
        time.sleep(0.05)
    return "released"


def test_a_release_does_not_wait_behind_busy_launch_workers(tmp_path: Path, monkeypatch: Any) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.server import app as server_app

    home = tmp_path / "home"
    home.mkdir()
    (home / "pool.yaml").write_text("hosts:\n  - name: localhost\n    connection: local\n")
    url = f"sqlite:///{home / 'ledger.db'}"
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", url)
    ledger = Ledger(url)
    seed_machine(ledger, "m-alice001", "alice", "ml")
    token = make_token(ledger, "alice", "ml", "member")
    ledger.close()
    flag = tmp_path / "let-launches-finish"

    app = server_app.create_app(Settings(home=home))
    server = app.state.server
    try:
        with TestClient(app) as client:
            launches = [server.workers.submit(hold_until, str(flag)) for _ in range(server_app.WORKERS)]
            with ThreadPoolExecutor(1) as one:
                releasing = one.submit(
                    client.delete, "/api/v1/machines/m-alice001", headers={"Authorization": f"Bearer {token}"}
                )
                try:
                    answer = releasing.result(timeout=30)
                except TimeoutError:
                    flag.touch()  # unblock, then fail: the release waited behind the launches
                    raise AssertionError("the release waited behind busy launch workers") from None
            assert answer.status_code == 200, answer.text
            assert answer.json()["machine"]["status"] == "terminated"
            assert not any(f.done() for f in launches)  # every launch worker was busy throughout
            flag.touch()
            assert [f.result(timeout=60) for f in launches] == ["released"] * server_app.WORKERS
    finally:
        flag.touch()


def test_stopping_the_server_ends_its_workers_after_the_grace_period(tmp_path: Path, monkeypatch: Any) -> None:
    import multiprocessing

    from deepops_infra.config import Settings
    from deepops_infra.server import app as server_app

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", f"sqlite:///{home / 'ledger.db'}")
    monkeypatch.setattr(server_app, "STOP_GRACE_SECONDS", 1.0)
    app = server_app.create_app(Settings(home=home))
    server = app.state.server
    never = str(tmp_path / "never")
    with TestClient(app):
        busy = [server.workers.submit(hold_until, never, deaf) for deaf in (False, True)]
        # more than the workers and the executor's call queue (workers + 1) hold: the last stays queued
        queued = [server.workers.submit(hold_until, never) for _ in range(3 * server_app.WORKERS)]
        deadline = time.monotonic() + 60
        while not all(f.running() for f in busy):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        started = time.monotonic()
    assert time.monotonic() - started < 20  # the grace, then SIGTERM, then SIGKILL for the deaf one
    assert multiprocessing.active_children() == []
    assert queued[-1].cancelled()  # what never reached a worker is cancelled
    assert all(f.cancelled() or f.exception(timeout=10) is not None for f in busy + queued)  # nothing finished


def test_the_systemd_unit_serves_and_stops_on_sigterm(sqlite_deepops: Any) -> None:
    unit = UNIT.read_text()
    [exec_start] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/deepops") and argv[1] == "serve"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # TLS in front; never the world directly
    for line in ("User=deepops", "NoNewPrivileges=true", "ProtectSystem=strict", "UMask=0077", "KillSignal=SIGTERM"):
        assert line in unit.splitlines()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
        )
        # the deepops user and /opt/deepops do not exist here: only the unit's own syntax counts
        problems = [
            x
            for x in (verify.stdout + verify.stderr).splitlines()
            if "deepops-serve.service" in x and "/opt/deepops" not in x and "User" not in x
        ]
        assert problems == [], verify.stdout + verify.stderr

    port = free_port()
    args = argv[1:]
    args[args.index("--port") + 1] = str(port)
    proc = sqlite_deepops.popen(*args)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "deepops serve did not answer"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/machines", timeout=5).status_code == 401
        workers = children(proc.pid)
        assert workers  # the launch pool's first worker, started with the server
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn ends by the signal it stopped for
    assert [pid for pid in workers if alive(pid)] == []  # no worker outlives its server


def test_workers_of_a_killed_server_exit_on_their_own(sqlite_deepops: Any) -> None:
    port = free_port()
    proc = sqlite_deepops.popen("serve", "--port", str(port), "--no-reaper")
    try:
        deadline = time.monotonic() + 60
        while not (workers := children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.2)
    finally:
        proc.kill()  # no shutdown: the workers are orphaned
        proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its killed server"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing's resource tracker is not one), from /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"spawn_main" in command:
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
