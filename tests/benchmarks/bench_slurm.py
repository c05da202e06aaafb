"""Leases on the local Slurm cluster (scripts/slurm-local.sh, 2 nodes, 8 fake GPUs), through the CLI.

A report, not a test. It prints:
  * up to ready and down of one lease at a time, with the image's environment cached on the login
    side (the first lease builds it): the whole `up`, ready after Slurm started the job, the `down`;
  * 20 leases requested at once (1 or 2 GPUs each, `wait` 20s): how many were placed and how many
    refused (with Slurm's reason), that no GPU was held twice, and that nothing was left behind
    (no pending or running job of this installation, no live ledger row) once all were released.

    .venv/bin/python tests/benchmarks/bench_slurm.py [--sequential 3] [--burst 20]

Needs root and Slurm (scripts/test-services.sh installs it); the cluster runs in its own state
folder and port, and is stopped at the end when this script started it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
CLUSTER_ENV = {"DEEPOPS_SLURM_DIR": "/tmp/deepops-slurm-bench", "DEEPOPS_SLURM_GPUS": "8", "DEEPOPS_SLURM_PORT": "6937"}


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")} | {"DEEPOPS_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "deepops_infra", *args], env=env, capture_output=True, text=True, check=False
    )


def up(home: Path, gpus: int) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    args = ("up", "--cloud", "onprem", "--gpus", f"A100-80GB:{gpus}", "--ttl", "30m", "--yes", "--json")
    proc = cli(home, *args)
    return time.monotonic() - t0, proc


def sequential(home: Path, rounds: int) -> None:
    ups, after_start, downs = [], [], []
    for i in range(rounds + 1):  # the first builds the environment cache
        took, proc = up(home, 1)
        if proc.returncode != 0:
            raise SystemExit(f"up failed: {proc.stderr[-500:]}")
        shown = json.loads(cli(home, "show", json.loads(proc.stdout)["id"], "--json").stdout)
        started = datetime.fromisoformat(shown["provider_refs"]["started_at"])
        ready = datetime.fromisoformat(shown["ready_at"].replace("Z", "+00:00"))
        t0 = time.monotonic()
        down = cli(home, "down", shown["id"], "--yes")
        if down.returncode != 0:
            raise SystemExit(f"down failed: {down.stderr[-500:]}")
        if i == 0:
            print(f"first lease (builds the env cache): up {took:.2f}s")
            continue
        ups.append(took)
        after_start.append((ready - started).total_seconds())
        downs.append(time.monotonic() - t0)
    print(f"up to ready (cached env), {rounds} leases: median {statistics.median(ups):.2f}s, max {max(ups):.2f}s")
    print(
        f"ready after Slurm started the job: median {statistics.median(after_start):.2f}s, "
        f"max {max(after_start):.2f}s (Slurm's start is whole seconds)"
    )
    print(f"down (scancel + confirmed ended): median {statistics.median(downs):.2f}s, max {max(downs):.2f}s")


def burst(home: Path, count: int) -> None:
    from deepops_infra.ledger import store
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.pool import load_pool
    from deepops_infra.providers.slurm.commands import Slurm

    sizes = [1 + (i % 2) for i in range(count)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda n: up(home, n), sizes))
    took = time.monotonic() - t0
    placed = [json.loads(p.stdout) for _, p in results if p.returncode == 0]
    refused = [p.stderr.strip().splitlines()[-1] for _, p in results if p.returncode != 0]
    slurm = Slurm(load_pool(home / "pool.yaml").clusters[0])
    held: list[tuple[str, int]] = []
    for m in placed:
        refs = json.loads(cli(home, "show", m["id"], "--json").stdout)["provider_refs"]
        held += [(refs["node"], i) for i in refs["gpu_indexes"]]
    pending = [j for j in slurm.jobs() if j.state == "PENDING" and j.name.startswith("deepops-")]
    print(f"{count} leases at once ({sum(sizes)} GPUs asked, 8 on the cluster) in {took:.1f}s:")
    print(f"  placed {len(placed)} holding {len(held)} GPUs; refused {len(refused)}; pending jobs left {len(pending)}")
    print(f"  double-booked GPUs: {len(held) - len(set(held))}")
    for reason in sorted(set(refused)):
        print(f"  refused x{refused.count(reason)}: {reason[:160]}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: cli(home, "down", m["id"], "--yes"), placed))
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    with ledger.read() as session:
        live = [m.id for m in store.list_machines(session) if m.ended_at is None]
        installation = store.installation_id(session)
    left = [j.id for j in slurm.jobs() if j.active and f"deepops-installation={installation}" in j.comment]
    print(f"  after release: live ledger rows {len(live)}, jobs of this installation still active {len(left)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, **CLUSTER_ENV}
    t0 = time.monotonic()
    start = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True)
    if start.returncode != 0:
        raise SystemExit(start.stderr)
    print(f"cluster start: {time.monotonic() - t0:.2f}s ({start.stderr.strip()})")
    entry = subprocess.run(["bash", str(SCRIPT), "pool-entry"], env=env, capture_output=True, text=True).stdout
    home = Path(tempfile.mkdtemp(prefix="deepops-bench-slurm-"))
    (home / "pool.yaml").write_text("include_localhost: false\n" + entry + "    wait: 20s\n")
    # the team's own GPU cap (8 by default) would refuse before Slurm is asked: Slurm decides here
    (home / "config.yaml").write_text("policy:\n  default:\n    max_gpus_running: 64\n")
    try:
        if args.sequential:
            sequential(home, args.sequential)
        if args.burst:
            burst(home, args.burst)
    finally:
        if "already running" not in start.stderr:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
