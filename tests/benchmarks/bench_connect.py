"""Connect benchmarks: how long a session takes to run `true`, against plain ssh to the same host.

A report, not a test: it always exits 0. Run from the repository root with the project's venv:

    .venv/bin/python tests/benchmarks/bench_connect.py [--runs N] [--json]

Set up in a temporary folder (nothing outside it is touched): a private sshd on 127.0.0.1 (the
"sshd host"), a local DEEPOPS_HOME whose pool has localhost and that host, one lease on each
(seeded: a workspace with its env.sh and a ledger row; leasing speed is bench_foundation's), and
a `deepops serve` with its own home, pool and ledger for team mode, with a member's token.

Rows (wall time of the whole command, median and p90 of N runs, after one warm-up run; and the
median CPU time of the processes the command waited for, which a busy machine hardly changes):
- plain ssh to the sshd host, `true`: the floor;
- `deepops ssh ID -- true`, local mode: the localhost lease, and the lease on the sshd host;
- `ssh -F <deepops ssh-config> deepops-ID true` for both (the ssh-config host session start);
- team mode: `deepops ssh ID -- true` and the ssh-config host, through the server.
Goal: `deepops ssh ID -- true` within 0.5 s of plain ssh, local and through the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))

GOAL_OVER_SSH_S = 0.5
CLI = [str(PYTHON if PYTHON.exists() else sys.executable), "-m", "deepops_infra"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(base: Path) -> tuple[subprocess.Popen, int, Path]:
    """A private sshd on 127.0.0.1 that lets in one client key (as tests/conftest.py's fixture)."""
    keygen(base / "host_key")
    keygen(base / "client_key")
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    os.chmod(base / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"StrictModes no\nPidFile {base / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
    )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(base / "sshd_config")], stderr=subprocess.DEVNULL)
    wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True, "sshd")
    return proc, port, base / "client_key"


def wait(check: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


def workspace(path: Path, machine_id: str) -> Path:
    (path / ".deepops").mkdir(parents=True, mode=0o700)
    (path / ".deepops" / "env.sh").write_text(
        f"export DEEPOPS_MACHINE={machine_id}\nexport DEEPOPS_WORKSPACE={path}\n"
        f"export DEEPOPS_LEASE_KEY=bench\nexport CUDA_VISIBLE_DEVICES=\n"
        'cd "$DEEPOPS_WORKSPACE" || return 1\n'
    )
    return path


def seed(ledger_url: str, mid: str, owner: str, host: str, ws: Path) -> None:
    from decimal import Decimal

    from deepops_infra.ledger import store
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.ledger.schema import Machine

    ledger = Ledger(ledger_url)
    at = store.now()
    with ledger.write() as session:
        m = Machine(
            id=mid,
            name=None,
            status="ready",
            cloud="onprem",
            region=None,
            host=host,
            owner=owner,
            team="ml",
            project="default",
            image="cpu-minimal",
            image_pin="sha256:bench",
            accelerator=None,
            gpu_count=0,
            request={"gpus": "0"},
            plan={"gpu_indexes": []},
            provider_refs={"workspace": str(ws)},
            price_per_hour=Decimal("0.1"),
            price_breakdown={},
            created_at=at,
            ready_at=at,
            expires_at=at + timedelta(hours=2),
        )
        session.add(m)
        session.flush()
        store.add_event(session, m, "transition", "seeded", to_status="ready", at=at, first=True)
        store.open_usage(session, m, at)
    ledger.close()


def pool_yaml(port: int, key: Path, root: Path) -> str:
    return (
        "hosts:\n  - name: localhost\n    connection: local\n    rates: {gpu_hour: 2, host_hour: 0.1}\n"
        f"  - name: sshbox\n    connection: ssh\n    address: 127.0.0.1\n    port: {port}\n    key: {key}\n"
        f"    workspace_root: {root}\n    rates: {{gpu_hour: 2, host_hour: 0.1}}\n"
    )


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), **extra)
    return env


def timed(argv: list[str], env: dict[str, str] | None, runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of `argv` (which must succeed) and the CPU seconds of the processes it waited
    for (a busy machine stretches the first, hardly the second), after one warm-up run."""
    import resource

    times, cpu = [], []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])}... exited {proc.returncode}: {proc.stderr.decode()[-300:]}")
        if i:
            times.append(elapsed)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times, cpu


def summary(name: str, measured: tuple[list[float], list[float]], floor: float | None) -> dict[str, Any]:
    times, cpu = measured
    median = statistics.median(times)
    p90 = sorted(times)[max(0, round(0.9 * len(times)) - 1)]
    over = None if floor is None else round(median - floor, 3)
    return {
        "name": name,
        "median_s": round(median, 3),
        "p90_s": round(p90, 3),
        "over_plain_ssh_s": over,
        "cpu_s": round(statistics.median(cpu), 3),
    }


def run(runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="deepops-bench-connect-"))
    procs: list[subprocess.Popen] = []
    try:
        (base / "sshd").mkdir()
        sshd, port, key = start_sshd(base / "sshd")
        procs.append(sshd)
        plain = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes"]
        plain += ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={base / 'plain_known'}"]
        floor = summary("plain ssh to the sshd host", timed([*plain, "127.0.0.1", "true"], None, runs), None)
        rows.append(floor)

        home = base / "home"
        home.mkdir(mode=0o700)
        (home / "pool.yaml").write_text(pool_yaml(port, key, base / "remote"))
        url = f"sqlite:///{home / 'ledger.db'}"
        seed(url, "m-local001", "bench", "localhost", workspace(base / "ws" / "m-local001", "m-local001"))
        seed(url, "m-sshbox01", "bench", "sshbox", workspace(base / "remote" / "m-sshbox01", "m-sshbox01"))
        env = env_for(home)
        config = base / "local.ssh_config"
        config.write_text(
            subprocess.run([*CLI, "ssh-config"], env=env, capture_output=True, check=True).stdout.decode()
        )
        for mid, where in (("m-local001", "localhost lease"), ("m-sshbox01", "lease on the sshd host")):
            times = timed([*CLI, "ssh", mid, "--", "true"], env, runs)
            rows.append(summary(f"deepops ssh -- true, local mode, {where}", times, floor["median_s"]))
            times = timed(["ssh", "-F", str(config), f"deepops-{mid}", "true"], env, runs)
            rows.append(summary(f"ssh-config host, local mode, {where}", times, floor["median_s"]))

        rows += team(base, port, key, runs, floor["median_s"], procs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    return rows


def team(base: Path, port: int, key: Path, runs: int, floor: float, procs: list[subprocess.Popen]) -> list[dict]:
    srv = base / "srv"
    srv.mkdir(mode=0o700)
    (srv / "pool.yaml").write_text(pool_yaml(port, key, base / "remote"))
    url = f"sqlite:///{srv / 'ledger.db'}"
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.server import identity

    ledger = Ledger(url)
    with ledger.write() as session:
        user = identity.ensure_user(session, "alice", "ml", "member")
        _, token = identity.create_token(session, user, timedelta(hours=1), "bench")
    ledger.close()
    seed(url, "m-team0001", "alice", "localhost", workspace(base / "ws" / "m-team0001", "m-team0001"))
    seed(url, "m-team0002", "alice", "sshbox", workspace(base / "remote" / "m-team0002", "m-team0002"))
    server_port = free_port()
    log = (base / "serve.log").open("w")
    procs.append(
        subprocess.Popen(
            [*CLI, "serve", "--port", str(server_port), "--no-reaper"], env=env_for(srv), stdout=log, stderr=log
        )
    )
    server = f"http://127.0.0.1:{server_port}"
    wait(lambda: urllib.request.urlopen(server + "/healthz", timeout=1).status == 200, "deepops serve")
    env = env_for(base / "laptop", DEEPOPS_SERVER=server, DEEPOPS_TOKEN=token)
    config = base / "team.ssh_config"
    config.write_text(subprocess.run([*CLI, "ssh-config"], env=env, capture_output=True, check=True).stdout.decode())
    rows = []
    for mid, where in (("m-team0001", "server's localhost lease"), ("m-team0002", "lease on the sshd host")):
        times = timed([*CLI, "ssh", mid, "--", "true"], env, runs)
        rows.append(summary(f"deepops ssh -- true, team mode, {where}", times, floor))
        times = timed(["ssh", "-F", str(config), f"deepops-{mid}", "true"], env, runs)
        rows.append(summary(f"ssh-config host, team mode, {where}", times, floor))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    try:
        rows = run(args.runs)
    except Exception:
        traceback.print_exc()
        print("bench_connect: failed (see above)")
        return 0
    if args.json:
        print(json.dumps({"load": load, "rows": rows}, indent=2))
        return 0
    print(f"bench_connect: {args.runs} runs each, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'session running `true`':<58} {'median':>8} {'p90':>8} {'over ssh':>9} {'cpu':>7}  goal")
    for r in rows:
        over = r["over_plain_ssh_s"]
        verdict = "" if over is None else ("ok" if over <= GOAL_OVER_SSH_S else f"over {GOAL_OVER_SSH_S}s")
        over_text = "" if over is None else f"{over:+.3f}"
        print(
            f"{r['name']:<58} {r['median_s']:>7.3f}s {r['p90_s']:>7.3f}s {over_text:>9} {r['cpu_s']:>6.3f}s  {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
