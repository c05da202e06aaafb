"""The server's hot read, GET /machines, without the ORM.

Listing is what every page and client polls. It goes through ledger.quickread (the database's own
driver, integer cost columns) on connections kept open, one per thread of a small pool, so a
request costs one indexed query and a few microseconds of Python instead of an ORM session;
the event loop never waits on the database. When quickread cannot serve the ledger (another
driver), `machines` returns None and the caller takes the ORM path.
"""

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from deepops_infra.ledger import quickread

THREADS = 4


class Listing:
    def __init__(self, url: str, threads: int = THREADS) -> None:
        self.url = url
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deepops-list")
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    def _connection(self, fresh: bool = False) -> tuple[Any, str] | None:
        opened = getattr(self._local, "opened", None)
        if opened is not None and not fresh:
            return opened
        if opened is not None:
            self._forget(opened[0])
        opened = quickread.connect(self.url)
        self._local.opened = opened
        if opened is not None:
            with self._lock:
                self._connections.append(opened[0])
        return opened

    def _forget(self, conn: Any) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _read(self, at: datetime, include_ended: bool, where: dict[str, str]) -> list[Any] | None:
        opened = self._connection()
        if opened is None:
            return None
        try:
            return quickread.read_machines(*opened, at, include_ended=include_ended, where=where)
        except Exception:
            # A connection the database dropped (restart, idle timeout): one retry on a new one.
            opened = self._connection(fresh=True)
            if opened is None:
                return None
            return quickread.read_machines(*opened, at, include_ended=include_ended, where=where)

    async def machines(
        self, at: datetime, *, include_ended: bool, where: dict[str, str]
    ) -> list[tuple[SimpleNamespace, Decimal]] | None:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, at, include_ended, where)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
