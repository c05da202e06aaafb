"""Whether the process launching a machine is alive: it holds a lock on the machine from before the
machine's row is written until its launch is over (ready, or failed or released and torn down), and
the operating system or the database drops that lock when the process ends, however it ends
(SIGKILL, a crash): no clock, no timeout, nothing to renew.

Launchers hold the lock shared (a team server holds it while a launch waits for a worker and runs
there; nothing stops two holders of one machine); whoever asks tries it exclusive without waiting,
and lets go at once. SQLite: flock on <ledger folder>/launch-locks/<machine>.lock, which its holder
creates (before the machine's row exists) and removes, as does a checker that finds it free (a
machine whose lock file is missing has no launcher). PostgreSQL: session advisory locks on one
connection the holding process keeps for as long as it holds any.

A machine written by an older version has no launcher event (see Lifecycle.record): nothing is
known about its launcher, and the reaper falls back on setup_timeout for it.
"""

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import text

from deepops_infra.ledger.db import Ledger

LAUNCHER_EVENT = "launcher"  # the event that says a machine's launcher holds its lock


def _key(machine_id: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(f"deepops-launch:{machine_id}".encode()).digest()[:8], "big", signed=True)


class LaunchLocks:
    """This process' launch locks on one ledger (one instance per ledger URL: see `of`)."""

    _instances: ClassVar[dict[str, "LaunchLocks"]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.kind = "advisory" if ledger.dialect == "postgresql" else "flock"
        self.lock_dir: Path | None = None
        if self.kind == "flock":
            database = ledger.engine.url.database or ""
            if database and database != ":memory:":
                self.lock_dir = Path(database).parent / "launch-locks"
            else:  # an in-memory ledger is this process' alone: its locks go to a private temp folder
                self.lock_dir = Path(tempfile.gettempdir()) / f"deepops-launch-locks-{os.getuid()}"
        self._mutex = threading.Lock()
        self._held: dict[str, int] = {}  # machine ID -> how many holds this process has on it
        self._files: dict[str, int] = {}  # machine ID -> its locked file (flock)
        self._conn: Any = None  # the connection holding the advisory locks (PostgreSQL)

    @classmethod
    def of(cls, ledger: Ledger) -> "LaunchLocks":
        """The locks of this process on `ledger`'s database: holds outlive any one Ledger object
        (a team server records a machine in one request and releases it when its worker is done)."""
        with cls._instances_lock:
            found = cls._instances.get(ledger.url)
            if found is None or (found.ledger.engine is not ledger.engine and not found._held):
                found = cls._instances[ledger.url] = cls(ledger)
            return found

    def _path(self, machine_id: str) -> Path:
        assert self.lock_dir is not None
        return self.lock_dir / f"{machine_id}.lock"

    def hold(self, machine_id: str) -> None:
        """Take (or take once more) this process' shared lock on the machine."""
        with self._mutex:
            if self._held.get(machine_id):
                self._held[machine_id] += 1
                return
            if self.kind == "flock":
                assert self.lock_dir is not None
                self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self._path(machine_id), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_SH)  # an exclusive try by a checker lasts an instant
                self._files[machine_id] = fd
            else:
                if self._conn is None:
                    self._conn = self.ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                self._conn.execute(text("SELECT pg_advisory_lock_shared(:k)"), {"k": _key(machine_id)})
            self._held[machine_id] = 1

    def release(self, machine_id: str) -> None:
        """Let go of one hold; a machine this process does not hold is left alone."""
        with self._mutex:
            count = self._held.get(machine_id, 0)
            if count > 1:
                self._held[machine_id] = count - 1
                return
            if count == 0:
                return
            del self._held[machine_id]
            if self.kind == "flock":
                fd = self._files.pop(machine_id)
                with contextlib.suppress(FileNotFoundError):
                    self._path(machine_id).unlink()  # before unlocking: a checker then finds no launcher
                os.close(fd)
                return
            with contextlib.suppress(Exception):  # a lost connection has dropped its locks already
                self._conn.execute(text("SELECT pg_advisory_unlock_shared(:k)"), {"k": _key(machine_id)})
            if not self._held:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None

    def alive(self, machine_id: str) -> bool:
        """Whether some process (this one included) holds the machine's launch lock now."""
        if self.kind == "flock":
            try:
                fd = os.open(self._path(machine_id), os.O_RDWR)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with contextlib.suppress(FileNotFoundError):  # left by a launcher that was killed
                    self._path(machine_id).unlink()
            except BlockingIOError:
                return True
            finally:
                os.close(fd)  # drops the exclusive lock if it was taken
            return False
        with self.ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            key = {"k": _key(machine_id)}
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar():
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
                return False
            return True
