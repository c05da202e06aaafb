"""One reaper at a time per machine: a PostgreSQL advisory lock, or an flock'd file beside the
SQLite ledger. Locks are taken without waiting: a machine another reaper holds is skipped this
cycle (that reaper is acting on it), and the row is re-read once the lock is held."""

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text

from deepops_infra.ledger.db import Ledger


def _key(name: str) -> int:
    """A stable signed 64-bit key for pg_try_advisory_lock."""
    return int.from_bytes(hashlib.sha256(f"deepops-reap:{name}".encode()).digest()[:8], "big", signed=True)


class MachineLocks:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.lock_dir: Path | None = None
        if ledger.dialect == "sqlite":
            database = ledger.engine.url.database or ""
            base = Path(database).parent if database and database != ":memory:" else Path.cwd()
            self.lock_dir = base / "reaper-locks"

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        """Yields True when this process now holds the lock on `name`, False when another does."""
        if self.lock_dir is None:
            with self.ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(name)}).scalar())
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
            return
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        safe = hashlib.sha256(name.encode()).hexdigest()[:24] if "/" in name else name
        fd = os.open(self.lock_dir / f"{safe}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
