"""Team server benchmark: 100 clients listing machines and 10 requesting and releasing on-prem
leases, for 60 s, against one `deepops serve` process on 127.0.0.1.

A report, not a test: it prints figures and exits 0 (1 only when the server cannot start).

    .venv/bin/python tests/benchmarks/bench_server.py [--duration 60] [--readers 100] [--writers 10]
        [--pg-url postgresql://root@127.0.0.1:5432/postgres] [--json]

- The ledger: PostgreSQL when --pg-url (or DEEPOPS_BENCH_PG_URL) is given (a database is created
  for the run and dropped after), else SQLite in a temporary DEEPOPS_HOME.
- Readers: 100 team-admins (10 teams), each listing their team's 20 seeded machines in a loop
  (closed loop, no think time) with its own token on its own keep-alive connection; every answer
  is checked (HTTP 200, 20 machines). Their client is a minimal HTTP/1.1 one (KeepAlive).
- Writers: 10 members, each in a loop: request a CPU machine on the local pool (cpu-minimal,
  real ansible-runner plays on localhost), poll it until ready, release it.
- The server's rate limit is raised for the run (server.rate_per_second / burst in its config);
  everything else is as shipped. Loopback only.
- The server runs in its own session, as a service would (deploy/systemd/deepops-serve.service
  puts it in its own cgroup): Linux schedules a session as one group, and the load generator
  (100 busy clients) would otherwise share the server's group. The readers' p99 is also printed
  for each 10 s of the run, to show where the tail is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # monotonic time each answer came (readers)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def summary(self, seconds: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None  # noqa: E731
        return {
            "requests": len(lat),
            "per_second": round(len(lat) / seconds, 1),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
        }

    def p99_by_window(self, started: float, window: float) -> list[float]:
        """p99 (ms) of the answers that came in each `window` seconds: where in the run the tail is."""
        buckets: dict[int, list[float]] = {}
        for at, took in zip(self.finished, self.latencies, strict=True):
            buckets.setdefault(int((at - started) // window), []).append(took)
        return [round(sorted(b)[min(len(b) - 1, int(0.99 * len(b)))] * 1000, 1) for _, b in sorted(buckets.items())]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(
    home: Path, ledger_url: str, readers: int, writers: int, list_cache: float | None = None
) -> tuple[list[str], list[str]]:
    from deepops_infra.ledger.db import Ledger
    from tests.test_server_fixtures import make_token, seed_machine

    (home / "pool.yaml").write_text(
        "hosts:\n  - name: localhost\n    connection: local\n    rates: {gpu_hour: 2, host_hour: 0.1}\n"
    )
    (home / "config.yaml").write_text(
        "server:\n  rate_per_second: 100000\n  burst: 100000\n"
        + (f"  list_cache_seconds: {list_cache}\n" if list_cache is not None else "")
        + "policy:\n  default:\n    max_gpus_running: 64\n"
    )
    ledger = Ledger(ledger_url)
    teams = [f"team{i}" for i in range(10)]
    for t, team in enumerate(teams):
        for i in range(20):
            seed_machine(ledger, f"m-{t:02d}{i:06d}", f"user{t}-{i}", team, price="1.25", hours_ago=1 + i / 10)
    reader_tokens = [
        make_token(ledger, f"reader{i}", teams[i % len(teams)], "team-admin", timedelta(hours=2))
        for i in range(readers)
    ]
    writer_tokens = [make_token(ledger, f"writer{i}", "writers", "member", timedelta(hours=2)) for i in range(writers)]
    ledger.close()
    return reader_tokens, writer_tokens


class KeepAlive:
    """One HTTP/1.1 keep-alive connection that sends GETs and reads Content-Length answers.

    The readers' load generator: an httpx request costs about a millisecond of client CPU, and
    on a 2-core machine the client shares the CPU with the server it measures (wrk or hey exist
    for the same reason)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{lines}\r\n".encode())
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        body = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status, body


async def reader(url: str, token: str, deadline: float, stats: Stats) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = KeepAlive(host, int(port))
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status, body = await conn.get("/api/v1/machines", headers)
            took = time.perf_counter() - started
            if status != 200:
                stats.error(f"HTTP {status}")
            elif len(json.loads(body)) != 20:
                stats.error("wrong machine count")
            else:
                stats.latencies.append(took)
                stats.finished.append(time.monotonic())
        except Exception as exc:
            stats.error(type(exc).__name__)
            conn = KeepAlive(host, int(port))


async def writer(client: Any, token: str, deadline: float, post: Stats, release: Stats, ready: Stats) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            r = await client.post("/api/v1/machines", headers=headers, json={"gpus": "0", "ttl": "30m"})
            if r.status_code != 202:
                post.error(f"HTTP {r.status_code}: {r.json().get('detail', '')[:80]}")
                await asyncio.sleep(1)
                continue
            post.latencies.append(time.perf_counter() - started)
            mid = r.json()["id"]
            while True:
                await asyncio.sleep(0.5)
                status = (await client.get(f"/api/v1/machines/{mid}", headers=headers)).json()["status"]
                if status in ("ready", "failed", "terminated"):
                    break
            if status != "ready":
                ready.error(f"machine {status}")
            else:
                ready.latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            r = await client.delete(f"/api/v1/machines/{mid}", headers=headers)
            if r.status_code != 200:
                release.error(f"HTTP {r.status_code}")
            else:
                release.latencies.append(time.perf_counter() - started)
        except Exception as exc:
            post.error(type(exc).__name__)


async def drive(url: str, readers: list[str], writers: list[str], duration: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=len(readers) + len(writers) + 10)
    reads, posts, releases, readies = Stats(), Stats(), Stats(), Stats()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        deadline = time.monotonic() + duration
        started = time.monotonic()
        writing = asyncio.gather(*(writer(client, t, deadline, posts, releases, readies) for t in writers))
        await asyncio.gather(*(reader(url, t, deadline, reads) for t in readers))
        read_seconds = time.monotonic() - started
        await writing  # writers finish the lease they hold: release what they requested
        seconds = time.monotonic() - started
    return {
        "seconds": round(seconds, 1),
        "list_machines": reads.summary(read_seconds) | {"p99_ms_by_10s": reads.p99_by_window(started, 10)},
        "request_machine": posts.summary(seconds),
        "time_to_ready_s": {k: v for k, v in readies.summary(seconds).items() if k != "per_second"},
        "release_machine": releases.summary(seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--pg-url", default=os.environ.get("DEEPOPS_BENCH_PG_URL"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--list-cache", type=float, default=None, help="server.list_cache_seconds for the run (default: as shipped)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    home = tmp / "home"
    home.mkdir()
    admin, dbname = None, None
    if args.pg_url:
        import psycopg
        from sqlalchemy.engine import make_url

        admin = psycopg.connect(args.pg_url, autocommit=True)
        dbname = f"deepops_bench_{uuid.uuid4().hex[:8]}"
        admin.execute(f'CREATE DATABASE "{dbname}"')
        ledger_url = make_url(args.pg_url).set(database=dbname).render_as_string(hide_password=False)
    else:
        ledger_url = f"sqlite:///{home / 'ledger.db'}"
    proc = None
    try:
        readers, writers = setup(home, ledger_url, args.readers, args.writers, args.list_cache)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
        env.update(DEEPOPS_HOME=str(home), DEEPOPS_LEDGER_URL=ledger_url)
        port = free_port()
        log = (tmp / "serve.log").open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepops_infra",
                "serve",
                "--port",
                str(port),
                "--no-reaper",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            print("server did not start:", (tmp / "serve.log").read_text()[-2000:])
            return 1
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        result = run(drive(f"http://127.0.0.1:{port}", readers, writers, args.duration))
        result |= {
            "ledger": "postgresql" if args.pg_url else "sqlite",
            "readers": args.readers,
            "writers": args.writers,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],  # the last minute: the run itself
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"deepops serve on 127.0.0.1, {result['ledger']} ledger, {result['cpus']} CPUs, "
        f"load average over the last minute {result['load_average']:.1f}; "
        f"{args.duration:.0f} s of load, {result['seconds']} s "
        "until the last lease was released (reads per second over the former)"
    )
    for name in ("list_machines", "request_machine", "release_machine"):
        r = result[name]
        print(
            f"  {name:<16} {r['requests']:>6} ok  {r['per_second']:>7}/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
            f"max {r['max_ms']} ms  errors {r['errors']} {r['error_kinds'] or ''}"
        )
    print(f"  list p99 (ms) in each 10 s of the run: {result['list_machines']['p99_ms_by_10s']}")
    t = result["time_to_ready_s"]
    print(f"  time to ready    {t['requests']:>6} machines  p50 {t['p50_ms']} ms  p99 {t['p99_ms']} ms", end="")
    print(f"  errors {t['errors']} {t['error_kinds'] or ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
