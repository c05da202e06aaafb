"""The server's hot read, GET /machines, without the ORM.

Listing is what every page and client polls. It goes through ledger.quickread (the database's own
driver, integer cost columns) on connections kept open, one per thread of a small pool, so a
read costs one indexed query instead of an ORM session and the event loop never waits on the
database. When quickread cannot serve the ledger (another driver), the answer is None and the
caller takes the ORM path.

Answers are reused per scope (the same filters) for `cache_seconds`, and concurrent requests for
a scope share one read: a hundred clients polling a team's machines cost one query a second, not
a hundred. Staleness is bounded by `cache_seconds` for changes made elsewhere (a worker moving a
machine to ready, the CLI on another host); `invalidate()` drops every answer when this server
changes something, and an answer read while that happened is not kept.
"""

import asyncio
import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from deepops_infra.ledger import quickread

THREADS = 4


class Listing:
    def __init__(self, url: str, cache_seconds: float = 0.0, threads: int = THREADS) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self._answers: dict[tuple[Any, ...], tuple[float, bytes]] = {}
        self._reading: dict[tuple[Any, ...], asyncio.Future[bytes | None]] = {}
        self._generation = 0
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

    def saved(self, *, include_ended: bool, where: dict[str, str]) -> bytes | None:
        """A fresh saved answer for the scope, or None (no I/O: safe anywhere on the event loop)."""
        hit = self._answers.get((include_ended, *sorted(where.items())))
        if hit is not None and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        return None

    async def machines_json(self, at: datetime, *, include_ended: bool, where: dict[str, str]) -> bytes | None:
        """The JSON body of GET /machines for a scope, fresh or at most `cache_seconds` old."""
        from deepops_infra.views import machine_json

        key = (include_ended, *sorted(where.items()))
        saved = self.saved(include_ended=include_ended, where=where)
        if saved is not None:
            return saved
        if self.cache_seconds > 0 and key in self._reading:
            return await asyncio.shield(self._reading[key])
        reading: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        if self.cache_seconds > 0:
            self._reading[key] = reading
        generation, started = self._generation, time.monotonic()
        try:
            rows = await self.machines(at, include_ended=include_ended, where=where)
            body = None if rows is None else _dumps([machine_json(m, spent) for m, spent in rows])
            if body is not None and self.cache_seconds > 0 and generation == self._generation:
                self._answers[key] = (started, body)
            reading.set_result(body)
            return body
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        finally:
            if self._reading.get(key) is reading:
                del self._reading[key]

    def invalidate(self) -> None:
        """Something changed through this server: no answer read before now is reused."""
        self._generation += 1
        self._answers.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()


def _dumps(value: Any) -> bytes:
    """As JSONResponse renders: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
