"""The server's hot reads without the ORM: GET /machines and token checks.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from deepops_infra.errors import DeepopsError
from deepops_infra.ledger import quickread

THREADS = 4


class Unavailable(Exception):
    """quickread cannot serve this ledger (another driver, another schema revision)."""


class KeptConnections:
    """Database connections kept open, one per thread of a small pool, for the server's hot reads
    (listing, token checks): a read costs one indexed query, not an ORM session, and the event
    loop never waits on the database."""

    def __init__(self, url: str, threads: int = THREADS) -> None:
        self.url = url
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deepops-read")
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

    def _run(self, read: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        opened = self._connection()
        if opened is None:
            raise Unavailable
        try:
            return read(*opened, *args)
        except DeepopsError:
            raise  # the answer (no such machine), not a broken connection
        except Exception:
            # A connection the database dropped (restart, idle timeout): one retry on a new one.
            opened = self._connection(fresh=True)
            if opened is None:
                raise Unavailable from None
            return read(*opened, *args)

    async def read(self, read: Callable[..., Any], *args: Any) -> Any:
        """`read(conn, mark, *args)` on a pool thread's kept connection; Unavailable when quickread
        cannot serve the ledger (the caller takes the ORM path)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, read, args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()


class Listing:
    """GET /machines's answers per scope, reused for `cache_seconds` (see the module's docstring)."""

    def __init__(self, reads: KeptConnections, cache_seconds: float = 0.0) -> None:
        self.reads = reads
        self.cache_seconds = cache_seconds
        self._answers: dict[tuple[Any, ...], tuple[float, bytes]] = {}
        self._reading: dict[tuple[Any, ...], asyncio.Future[bytes | None]] = {}
        self._generation = 0

    async def machines(
        self, at: datetime, *, include_ended: bool, where: dict[str, str]
    ) -> list[tuple[SimpleNamespace, Decimal]] | None:
        def read(conn: Any, mark: str) -> list[tuple[SimpleNamespace, Decimal]]:
            return quickread.read_machines(conn, mark, at, include_ended=include_ended, where=where)

        try:
            return await self.reads.read(read)
        except Unavailable:
            return None

    def saved(self, *, include_ended: bool, where: dict[str, str]) -> bytes | None:
        """A fresh saved answer for the scope, or None (no I/O: safe anywhere on the event loop)."""
        hit = self._answers.get((include_ended, *sorted(where.items())))
        if hit is not None and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        return None

    async def machines_json(self, at: datetime, *, include_ended: bool, where: dict[str, str]) -> bytes | None:
        """The JSON body of GET /machines for a scope, fresh or at most `cache_seconds` old."""
        from deepops_infra.views import MachineView

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
            body = None if rows is None else _dumps([MachineView.of(m, spent).to_json() for m, spent in rows])
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


def _dumps(value: Any) -> bytes:
    """As JSONResponse renders: compact, UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
