"""What reading the audit log costs as it grows (`deepops audit`, GET /api/v1/audit), and what
noting a token's last use adds to a request (server/token_use.py).

A report, not a test: it fills a ledger with N audit entries (200 actors, the newest hour holding
1% of them; one rare actor with 0.1%) and prints milliseconds per read for the newest 100, a
--user filter (a busy and a rare user), an --action filter and --since 1h; then microseconds per
TokenUse.note.

    .venv/bin/python tests/benchmarks/bench_audit.py [--entries 200000] [--ledger-url URL]
"""

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def fill(ledger, n: int) -> None:  # type: ignore[no-untyped-def]
    from deepops_infra.ledger import store
    from deepops_infra.ledger.schema import AuditEntry

    now = store.now()
    actions = ["request_machine", "release_machine", "extend_machine", "create_token", "users_set_role"]
    table = AuditEntry.__table__
    batch = []
    for i in range(n):
        at = now - timedelta(hours=100) + timedelta(hours=100) * i / n
        actor = "rare" if i % 1000 == 7 else f"user{i % 200}"
        batch.append(
            dict(
                at=at,
                actor=actor,
                role="member",
                method="POST",
                path="/api/v1/machines",
                action=actions[i % len(actions)],
                target=f"m-{i:08d}",
                status_code=202,
                outcome="ok",
                detail=None,
                client="10.0.0.1",
            )
        )
        if len(batch) == 10_000:
            with ledger.write() as session:
                session.execute(table.insert(), batch)
            batch = []
    if batch:
        with ledger.write() as session:
            session.execute(table.insert(), batch)


def timed(ledger, label: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
    from deepops_infra.server.accounts import read_audit

    runs = []
    for _ in range(5):
        start = time.perf_counter()
        with ledger.read() as session:
            rows = read_audit(session, **kwargs)
        runs.append(time.perf_counter() - start)
    print(f"  {label:<34} {min(runs) * 1000:8.1f} ms  ({len(rows)} rows)")


def main() -> int:
    from deepops_infra.ledger import store
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.server.token_use import TokenUse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--ledger-url", default=None, help="an empty PostgreSQL database (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(args.ledger_url or f"sqlite:///{tmp}/ledger.db")
        start = time.perf_counter()
        fill(ledger, args.entries)
        print(f"{ledger.dialect}: {args.entries} audit entries written in {time.perf_counter() - start:.1f} s")
        now = store.now()
        timed(ledger, "newest 100")
        timed(ledger, "--user user7 (0.5%)", user="user7")
        timed(ledger, "--user rare (0.1%)", user="rare")
        timed(ledger, "--action set_role (20%)", action="set_role")
        timed(ledger, "--since 1h", since=now - timedelta(hours=1))
        timed(ledger, "--user rare --since 1h", user="rare", since=now - timedelta(hours=1))
        use, n = TokenUse(), 200_000
        start = time.perf_counter()
        for i in range(n):
            use.note(f"t-{i % 50}", ledger)
        print(f"TokenUse.note: {(time.perf_counter() - start) / n * 1e6:.2f} us per request")
        ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
