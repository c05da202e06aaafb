"""Cost report benchmark: `deepops cost --by team --format json` on a ledger of 1,000,000 usage
intervals (and 200,000 utilization samples), wall time and peak memory, SQLite and PostgreSQL.

A report, not a test: it prints figures and always exits 0. From the repository root:

    .venv/bin/python tests/benchmarks/bench_costs.py [--intervals N] [--runs 5]

PostgreSQL is measured when DEEPOPS_BENCH_PG_URL (or DEEPOPS_TEST_PG_URL) is set: a database is
created for the run and dropped at the end. Goals (issue 6): <= 1.5 s and <= 300 MB peak RSS.
Peak RSS is the child's ru_maxrss (the same figure as /usr/bin/time -v "Maximum resident set size").
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
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
sys.path.insert(0, str(ROOT))

GOAL_S, GOAL_MB = 1.5, 300
TEAMS = [f"team-{i:02d}" for i in range(20)]
MONTH_START = datetime(2026, 10, 1, tzinfo=UTC)


def rows(intervals: int, seed: int = 7):
    """Machines with 5 intervals each across October 2026 (some crossing into November)."""
    rng = random.Random(seed)
    machines, ivs, samples = [], [], []
    per = 5
    for m in range(intervals // per):
        mid = f"m-{m:08x}"
        team = TEAMS[m % len(TEAMS)]
        gpus = rng.choice([0, 1, 2, 4, 8])
        price = round(0.05 + gpus * rng.choice([1.1, 2.5, 3.9]), 6)
        start = MONTH_START + timedelta(seconds=rng.randrange(0, 31 * 86400))
        at = start
        for _ in range(per):
            length = timedelta(seconds=rng.randrange(60, 6 * 3600), microseconds=rng.randrange(0, 10**6))
            ivs.append((mid, at, at + length, price, gpus))
            at = at + length
        machines.append((mid, team, gpus, price, start, at))
        if m % 1 == 0 and len(samples) < intervals // 5:
            samples.append((mid, start + timedelta(minutes=30), 1800, False))
    return machines, ivs, samples


def integers(start: datetime, end: datetime, price: float) -> tuple[int, int, int, int]:
    """The integer columns the ledger derives on every write (schema.UsageInterval)."""
    from decimal import Decimal

    from deepops_infra.pricing import cost_micro, epoch_us, price_micro

    s_us, e_us, p_micro = epoch_us(start), epoch_us(end), price_micro(Decimal(str(price)))
    return s_us, e_us, p_micro, cost_micro(p_micro, e_us - s_us)


def close_totals(url: str) -> None:
    """What the ledger does when each machine ends (store.end_machine), for every machine at once."""
    from deepops_infra.costs.query import finalize
    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(url)
    with ledger.write() as session:
        finalize(session, ledger.dialect, None)
    ledger.close()


def fill_sqlite(path: Path, intervals: int) -> None:
    import sqlite3

    from deepops_infra.ledger.db import Ledger

    Ledger(f"sqlite:///{path}").close()  # migrated schema
    machines, ivs, samples = rows(intervals)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.executemany(
        "INSERT INTO machines (id, status, cloud, owner, team, project, image, accelerator, gpu_count, request, plan,"
        " provider_refs, price_per_hour, price_breakdown, created_at, expires_at, ended_at)"
        " VALUES (?, 'terminated', 'onprem', 'user', ?, 'proj', 'img', 'A100', ?, '{}', '{}', '{}', ?, '{}', ?, ?, ?)",
        [(m, t, g, p, s.strftime(fmt), e.strftime(fmt), e.strftime(fmt)) for m, t, g, p, s, e in machines],
    )
    con.executemany(
        "INSERT INTO usage_intervals (machine_id, started_at, ended_at, price_per_hour, gpu_count,"
        " started_us, ended_us, price_micro, cost_micro) VALUES (?,?,?,?,?,?,?,?,?)",
        [(m, s.strftime(fmt), e.strftime(fmt), p, g, *integers(s, e, p)) for m, s, e, p, g in ivs],
    )
    con.executemany(
        "INSERT INTO utilization_samples (machine_id, at, interval_seconds, source, active) VALUES (?,?,?,'agent',?)",
        [(m, a.strftime(fmt), i, act) for m, a, i, act in samples],
    )
    con.commit()
    con.close()
    close_totals(f"sqlite:///{path}")
    con = sqlite3.connect(path)
    con.execute("ANALYZE")
    con.close()


def fill_pg(url: str, intervals: int) -> None:
    import psycopg

    from deepops_infra.ledger.db import Ledger

    Ledger(url).close()
    machines, ivs, samples = rows(intervals)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con, con.cursor() as cur:
        with cur.copy(
            "COPY machines (id, status, cloud, owner, team, project, image, accelerator, gpu_count, request, plan,"
            " provider_refs, price_per_hour, price_breakdown, created_at, expires_at, ended_at) FROM STDIN"
        ) as copy:
            for m, t, g, p, s, e in machines:
                copy.write_row(
                    (m, "terminated", "onprem", "user", t, "proj", "img", "A100", g, "{}", "{}", "{}", p, "{}", s, e, e)
                )
        with cur.copy(
            "COPY usage_intervals (machine_id, started_at, ended_at, price_per_hour, gpu_count,"
            " started_us, ended_us, price_micro, cost_micro) FROM STDIN"
        ) as copy:
            for m, s, e, p, g in ivs:
                copy.write_row((m, s, e, p, g, *integers(s, e, p)))
        with cur.copy("COPY utilization_samples (machine_id, at, interval_seconds, source, active) FROM STDIN") as copy:
            for m, a, i, act in samples:
                copy.write_row((m, a, i, "agent", act))
    close_totals(url)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as con:
        con.execute("ANALYZE")


def run_child(env: dict[str, str], args: list[str]) -> tuple[float, float, int, str]:
    """One run; wall seconds and this child's own peak RSS in MB (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "deepops_infra", "cost", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, (out if proc.returncode == 0 else err).decode()


def report(name: str, env: dict[str, str], runs: int) -> None:
    args = ["--by", "team", "--month", "2026-10", "--format", "json"]
    run_child(env, args)  # warm the page cache
    walls, peaks = [], []
    for _ in range(runs):
        wall, peak, code, text = run_child(env, args)
        if code != 0:
            print(f"{name}: deepops cost failed: {text[-400:]}")
            return
        walls.append(wall)
        peaks.append(peak)
    import json

    total = json.loads(text)["total"]
    print(
        f"{name:<11} deepops cost {' '.join(args)}: wall median {statistics.median(walls):.3f} s "
        f"(min {min(walls):.3f}, max {max(walls):.3f}; goal <= {GOAL_S} s), peak RSS max {max(peaks):.0f} MB "
        f"(goal <= {GOAL_MB} MB); total cost {total['cost']}, {total['machines']} machines"
    )


def fill_in_child(kind: str, target: str, intervals: int) -> None:
    """Seed in a child process, so this one stays small: a forked child's peak RSS would
    otherwise start from this process's size."""
    subprocess.run([str(PYTHON), __file__, "--fill", kind, target, "--intervals", str(intervals)], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fill", nargs=2, metavar=("KIND", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        kind, target = args.fill
        (fill_sqlite if kind == "sqlite" else fill_pg)(Path(target) if kind == "sqlite" else target, args.intervals)
        return
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        db = home / "ledger.db"
        t0 = time.perf_counter()
        fill_in_child("sqlite", str(db), args.intervals)
        print(
            f"SQLite ledger: {args.intervals:,} intervals written in {time.perf_counter() - t0:.1f} s "
            f"({db.stat().st_size / 2**20:.0f} MB)"
        )
        report("SQLite", base_env | {"DEEPOPS_HOME": str(home)}, args.runs)

        pg = os.environ.get("DEEPOPS_BENCH_PG_URL") or os.environ.get("DEEPOPS_TEST_PG_URL")
        if not pg:
            print("PostgreSQL: skipped (set DEEPOPS_BENCH_PG_URL)")
            return
        import psycopg
        from sqlalchemy.engine import make_url

        admin = psycopg.connect(pg.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        name = f"deepops_bench_{uuid.uuid4().hex[:8]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(pg).set(database=name).render_as_string(hide_password=False)
            t0 = time.perf_counter()
            fill_in_child("pg", url, args.intervals)
            print(f"PostgreSQL ledger: {args.intervals:,} intervals written in {time.perf_counter() - t0:.1f} s")
            report("PostgreSQL", base_env | {"DEEPOPS_HOME": str(home), "DEEPOPS_LEDGER_URL": url}, args.runs)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
