"""Cost report benchmark: `deepops cost --by team --month 2026-10` (JSON and the table) on a ledger of
1,000,000 usage intervals (and 200,000 utilization samples), wall time, the CLI's CPU time and peak
memory, SQLite and PostgreSQL.

A report, not a test: it prints figures and always exits 0. From the repository root:

    .venv/bin/python tests/benchmarks/bench_costs.py [--intervals N] [--runs 5] [--history-months N] [--html]

--history-months N seeds N months (the last is October 2026) of --intervals each, plus a few
machines still running, and reports a recent month, an older month and one day: on a ledger of
years, a report should cost what its period touches, not what the ledger holds. Without it the
ledger is October 2026 alone, as in the figures measured before the option existed. --html also
measures October as the HTML page (its daily series and costliest machines are more queries).

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


def month_back(months: int) -> datetime:
    """The first of the month `months` before October 2026."""
    index = MONTH_START.year * 12 + MONTH_START.month - 1 - months
    return MONTH_START.replace(year=index // 12, month=index % 12 + 1)


def rows(intervals: int, seed: int = 7, month_start: datetime = MONTH_START, prefix: str = "m-"):
    """Machines with 5 intervals each across a month (some crossing into the next one); by default
    October 2026. Each machine is (id, team, gpus, price, start, end, running)."""
    rng = random.Random(seed)
    machines, ivs, samples = [], [], []
    per = 5
    for m in range(intervals // per):
        mid = f"{prefix}{m:08x}"
        team = TEAMS[m % len(TEAMS)]
        gpus = rng.choice([0, 1, 2, 4, 8])
        price = round(0.05 + gpus * rng.choice([1.1, 2.5, 3.9]), 6)
        start = month_start + timedelta(seconds=rng.randrange(0, 31 * 86400))
        at = start
        for _ in range(per):
            length = timedelta(seconds=rng.randrange(60, 6 * 3600), microseconds=rng.randrange(0, 10**6))
            ivs.append((mid, at, at + length, price, gpus))
            at = at + length
        machines.append((mid, team, gpus, price, start, at, False))
        if m % 1 == 0 and len(samples) < intervals // 5:
            samples.append((mid, start + timedelta(minutes=30), 1800, False))
    return machines, ivs, samples


def history_rows(intervals: int, months: int):
    """`months` months of `rows`, the last one October 2026 exactly as without history, and one
    machine per team still running since late October (an open interval, no closed totals)."""
    machines, ivs, samples = rows(intervals)
    for back in range(1, months):
        more = rows(intervals, 7 + back, month_back(back), f"h{back:03d}-")
        for mine, theirs in zip((machines, ivs, samples), more, strict=True):
            mine.extend(theirs)
    for i, team in enumerate(TEAMS):
        mid, start = f"r-{i:08x}", MONTH_START + timedelta(days=30, hours=i)
        machines.append((mid, team, 1, 2.5, start, None, True))
        ivs.append((mid, start, None, 2.5, 1))
    return machines, ivs, samples


def integers(start: datetime, end: datetime | None, price: float) -> tuple[int, int | None, int, int | None]:
    """The integer columns the ledger derives on every write (schema.UsageInterval)."""
    from decimal import Decimal

    from deepops_infra.pricing import cost_micro, epoch_us, price_micro

    s_us, p_micro = epoch_us(start), price_micro(Decimal(str(price)))
    if end is None:  # open
        return s_us, None, p_micro, None
    e_us = epoch_us(end)
    return s_us, e_us, p_micro, cost_micro(p_micro, e_us - s_us)


def machine_row(m: str, t: str, g: int, p: float, s: datetime, e: datetime | None, running: bool) -> tuple:
    """The varying machine columns of the INSERT/COPY below: a running machine has its usage start
    (store.open_usage) and no end; an ended one gets its span and totals from close_totals."""
    from deepops_infra.pricing import epoch_us

    return (
        m,
        "ready" if running else "terminated",
        t,
        g,
        p,
        s,
        (s + timedelta(days=7)) if running else e,
        None if running else e,
        epoch_us(s) if running else None,
    )


def close_totals(url: str) -> None:
    """What the ledger does when each machine ends (store.end_machine), for every machine at once."""
    from deepops_infra.costs.query import finalize
    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(url)
    with ledger.write() as session:
        finalize(session, ledger.dialect, None)
    ledger.close()


def seed_rows(intervals: int, months: int):
    return history_rows(intervals, months) if months > 1 else rows(intervals)


def fill_sqlite(path: Path, intervals: int, months: int) -> None:
    import sqlite3

    from deepops_infra.ledger.db import Ledger

    Ledger(f"sqlite:///{path}").close()  # migrated schema
    machines, ivs, samples = seed_rows(intervals, months)
    fmt = "%Y-%m-%d %H:%M:%S.%f"

    def text(at: datetime | None) -> str | None:
        return at.strftime(fmt) if at else None

    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.executemany(
        "INSERT INTO machines (id, status, cloud, owner, team, project, image, accelerator, gpu_count, request, plan,"
        " provider_refs, price_per_hour, price_breakdown, created_at, expires_at, ended_at, usage_from_us)"
        " VALUES (?, ?, 'onprem', 'user', ?, 'proj', 'img', 'A100', ?, '{}', '{}', '{}', ?, '{}', ?, ?, ?, ?)",
        [
            (m, status, t, g, p, text(s), text(x), text(e), u)
            for m, status, t, g, p, s, x, e, u in (machine_row(*row) for row in machines)
        ],
    )
    con.executemany(
        "INSERT INTO usage_intervals (machine_id, started_at, ended_at, price_per_hour, gpu_count,"
        " started_us, ended_us, price_micro, cost_micro) VALUES (?,?,?,?,?,?,?,?,?)",
        [(m, text(s), text(e), p, g, *integers(s, e, p)) for m, s, e, p, g in ivs],
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


def fill_pg(url: str, intervals: int, months: int) -> None:
    import psycopg

    from deepops_infra.ledger.db import Ledger

    Ledger(url).close()
    machines, ivs, samples = seed_rows(intervals, months)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con, con.cursor() as cur:
        with cur.copy(
            "COPY machines (id, status, cloud, owner, team, project, image, accelerator, gpu_count, request, plan,"
            " provider_refs, price_per_hour, price_breakdown, created_at, expires_at, ended_at, usage_from_us)"
            " FROM STDIN"
        ) as copy:
            for m, status, t, g, p, s, x, e, u in (machine_row(*row) for row in machines):
                copy.write_row(
                    (m, status, "onprem", "user", t, "proj", "img", "A100", g, "{}", "{}", "{}", p, "{}", s, x, e, u)
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


def run_child(env: dict[str, str], args: list[str]) -> tuple[float, float, int, str, float]:
    """One run; wall seconds, this child's own peak RSS in MB and its CPU seconds (os.wait4): CPU
    time is the steadier figure on a shared machine, where waiting for a core inflates wall time
    (PostgreSQL's own work is in the server's processes, not in this CPU figure)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "deepops_infra", "cost", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = (out if proc.returncode == 0 else err).decode()
    return wall, usage.ru_maxrss / 1024, proc.returncode, text, usage.ru_utime + usage.ru_stime


def report(name: str, env: dict[str, str], runs: int, args: list[str]) -> None:
    run_child(env, args)  # warm the page cache
    walls, peaks, cpus = [], [], []
    for _ in range(runs):
        wall, peak, code, text, cpu = run_child(env, args)
        if code != 0:
            print(f"{name}: deepops cost failed: {text[-400:]}")
            return
        walls.append(wall)
        peaks.append(peak)
        cpus.append(cpu)
    import json

    if "json" in args:
        total = json.loads(text)["total"]
        what = f"total cost {total['cost']}, {total['machines']} machines"
    else:
        what = f"{len(text):,} characters"
    print(
        f"{name:<11} deepops cost {' '.join(args)}:\n            wall median {statistics.median(walls):.3f} s "
        f"(min {min(walls):.3f}, max {max(walls):.3f}; goal <= {GOAL_S} s), CLI CPU median "
        f"{statistics.median(cpus):.3f} s, peak RSS max {max(peaks):.0f} MB (goal <= {GOAL_MB} MB); {what}; "
        f"load {os.getloadavg()[0]:.2f}"
    )


def fill_in_child(kind: str, target: str, intervals: int, months: int) -> None:
    """Seed in a child process, so this one stays small: a forked child's peak RSS would
    otherwise start from this process's size."""
    subprocess.run(
        [str(PYTHON), __file__, "--fill", kind, target, "--intervals", str(intervals), "--history-months", str(months)],
        check=True,
        cwd=ROOT,
    )


def reports(months: int, html: bool) -> list[list[str]]:
    """What is measured: October 2026 by team; with history also an older month and one day."""
    month = ["--by", "team", "--month", "2026-10", "--format", "json"]
    measured = [month, month[:-2]]  # JSON, and the table people read
    if months > 1:
        older = month_back(months // 2).strftime("%Y-%m")
        day = ["--by", "team", "--since", "2026-10-15", "--until", "2026-10-16", "--format", "json"]
        measured += [["--by", "team", "--month", older, "--format", "json"], day]
    return measured + ([[*month[:-1], "html"]] if html else [])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=int, default=1_000_000, help="usage intervals per month")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--history-months", type=int, default=1, help="months of history, the last October 2026")
    parser.add_argument("--html", action="store_true", help="also October as the HTML page")
    parser.add_argument("--fill", nargs=2, metavar=("KIND", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    months = max(1, args.history_months)
    if args.fill:
        kind, target = args.fill
        if kind == "sqlite":
            fill_sqlite(Path(target), args.intervals, months)
        else:
            fill_pg(target, args.intervals, months)
        return
    total = args.intervals * months
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        db = home / "ledger.db"
        t0 = time.perf_counter()
        fill_in_child("sqlite", str(db), args.intervals, months)
        print(
            f"SQLite ledger: {total:,} intervals ({months} months) written in {time.perf_counter() - t0:.1f} s "
            f"({db.stat().st_size / 2**20:.0f} MB)"
        )
        for report_args in reports(months, args.html):
            report("SQLite", base_env | {"DEEPOPS_HOME": str(home)}, args.runs, report_args)

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
            fill_in_child("pg", url, args.intervals, months)
            print(
                f"PostgreSQL ledger: {total:,} intervals ({months} months) written in {time.perf_counter() - t0:.1f} s"
            )
            for report_args in reports(months, args.html):
                report(
                    "PostgreSQL",
                    base_env | {"DEEPOPS_HOME": str(home), "DEEPOPS_LEDGER_URL": url},
                    args.runs,
                    report_args,
                )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
