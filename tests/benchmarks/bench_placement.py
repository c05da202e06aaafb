"""Placement and CLI import-cost figures for the cloud part. A report, not a test: always exits 0.

    .venv/bin/python tests/benchmarks/bench_placement.py [--requests 100] [--repeat 5]

1. Placement over the whole shipped catalog for N requests (a mix of models, counts, spot and
   region constraints, as a user population would ask): total and per-request time, best of
   --repeat runs, plus the catalog load time (CSV parse) on its own.
2. What `deepops --help` and `deepops gpus` pay at start: wall time (median of 5) and, from
   `python -X importtime`, whether pulumi, pulumi_aws, boto3 or botocore were imported at all.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))

HEAVY = ("pulumi", "pulumi_aws", "boto3", "botocore", "sqlalchemy", "yaml")


def requests(n: int, seed: int = 7) -> list[object]:
    from deepops_infra.request import GpuSpec, MachineRequest

    asks = [
        "T4:1",
        "T4:4",
        "A10G:1",
        "A10G:4",
        "L4:1",
        "L4:8",
        "L40S:1",
        "H100:8",
        "H100:1",
        "A100:8",
        "V100:8",
        "B200:8",
    ]
    regions = [None, None, None, "us-east-1", "us-west-2"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            MachineRequest(
                gpus=GpuSpec.parse(rng.choice(asks)),
                cloud="aws",
                region=rng.choice(regions),
                host=None,
                image="pytorch",
                spot=rng.random() < 0.3,
                ttl=timedelta(hours=8),
                idle_timeout=timedelta(hours=1),
                disk_gb=None,
                owner="bench",
                team="bench",
                project="bench",
                name=None,
            )
        )
    return out


def bench_placement(n: int, repeat: int) -> None:
    from deepops_infra.catalog import load_catalog
    from deepops_infra.errors import UserError
    from deepops_infra.placement import place
    from deepops_infra.providers.aws.images import pin_for

    start = time.perf_counter()
    catalog = load_catalog()
    load_s = time.perf_counter() - start
    reqs = requests(n)
    pins = {"aws": lambda region, image: pin_for(image, region), "gcp": lambda r, i: None, "azure": lambda r, i: None}
    best, placed, refused = float("inf"), 0, 0
    for _ in range(repeat):
        placed = refused = 0
        start = time.perf_counter()
        for req in reqs:
            try:
                place(req, catalog, pins)  # type: ignore[arg-type]
                placed += 1
            except UserError:
                refused += 1
        best = min(best, time.perf_counter() - start)
    print(f"catalog: {len(catalog)} offerings, loaded in {load_s * 1000:.2f} ms")
    print(
        f"placement: {n} requests in {best * 1000:.2f} ms (best of {repeat}), "
        f"{best / n * 1e6:.1f} us/request; {placed} placed, {refused} refused with a reason"
    )


def imports_of(args: list[str], env: dict[str, str]) -> tuple[set[str], float]:
    proc = subprocess.run(
        [str(PYTHON), "-X", "importtime", "-m", "deepops_infra", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    loaded = set()
    total_us = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        if not self_us.strip().isdigit():
            continue  # the header line
        if not name.startswith("  "):  # a top-level import: its cumulative time includes its children
            total_us += int(cumulative_us)
        loaded.add(name.strip().split(".")[0])
    return loaded & set(HEAVY), total_us / 1e6


def wall(args: list[str], env: dict[str, str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([str(PYTHON), "-m", "deepops_infra", *args], capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_cli() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")} | {"DEEPOPS_HOME": home}
        for args in (["--help"], ["gpus"], ["gpus", "--json"]):
            heavy, cumulative = imports_of(args, env)
            print(
                f"deepops {' '.join(args)}: {wall(args, env):.3f} s wall (median of 5), "
                f"imports {cumulative:.3f} s cumulative; heavy modules imported: {', '.join(sorted(heavy)) or 'none'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench_placement(args.requests, args.repeat)
    bench_cli()


if __name__ == "__main__":
    main()
