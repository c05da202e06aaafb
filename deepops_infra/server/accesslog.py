"""One access-log line per request, and the request metrics from the same measurement.

    2026-12-03T16:20:01.123Z INFO deepops.access method=GET route=/api/v1/machines/{ref}
        path=/api/v1/machines/m-1a2b status=200 duration_ms=2.4 user=alice client=10.0.0.7

(one line), logfmt: `key=value`, a value with spaces, quotes or control characters written as a
JSON string, so a line never splits and a crafted path cannot forge one. `route` is the template
the request matched (`unmatched` when none did), `user` the token's person (`-` when none was
shown or it was refused), `client` the address `server.trusted_proxies` resolved (server/edge.py:
this layer sits inside Edge). No header, query string, body or token is ever logged.

`deepops serve --log-level` sets the level of the `deepops` loggers (access log, reaper loop):
at the default, info, every request and every reaper cycle has its line; warning keeps only
trouble.
"""

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepops_infra.server.app import Server

log = logging.getLogger("deepops.access")
PLAIN = re.compile(r"[A-Za-z0-9_./{}:@+,*~-]{1,200}")
PATH_CHARS = 200
SEEN_PATHS = 1024  # paths answered before routing whose template is remembered


def value(text: str) -> str:
    """A logfmt value: plain when it is safe, else a JSON string (escapes quotes and newlines)."""
    return text if PLAIN.fullmatch(text) else json.dumps(text[:PATH_CHARS])


def route_of(scope: dict[str, Any], routes: Callable[[], list[Any]], seen: dict[str, str]) -> str:
    """The route template the request matched; requests answered before routing (a 429, the saved
    machine list: the hottest request) are matched here the way the router would, once per path
    while `seen` remembers it."""
    route = scope.get("route")
    if route is not None:
        return route.path if isinstance(getattr(route, "path", None), str) else "unmatched"
    path = scope.get("path", "")
    template = seen.get(path)
    if template is None:
        from starlette.routing import Match

        found = next((c for c in routes() if c.matches(scope)[0] is not Match.NONE), None)
        template = found.path if isinstance(getattr(found, "path", None), str) else "unmatched"
        if len(seen) >= SEEN_PATHS:  # a flood of made-up paths: start again rather than grow
            seen.clear()
        seen[path] = template
    return template


class AccessLog:
    """ASGI layer inside Edge: times each request, logs its line, feeds the request metrics."""

    def __init__(self, app: Any, server: "Server", routes: Callable[[], list[Any]]) -> None:
        self.app, self.server, self.routes = app, server, routes
        self.seen: dict[str, str] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.record(scope, status, time.perf_counter() - started)

    def record(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        route = route_of(scope, self.routes, self.seen)
        method = scope["method"]
        self.server.metrics.observe(method, route, status, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        log.info(
            "method=%s route=%s path=%s status=%d duration_ms=%.1f user=%s client=%s",
            value(method),
            value(route),
            value(scope.get("path", "")),
            status,
            seconds * 1000,
            value(self.user(scope)),
            value(client[0] if client else "-"),
        )

    def user(self, scope: dict[str, Any]) -> str:
        """The caller the handler identified, else the cached owner of the bearer token (the saved
        machine list and refusals answer without the handler); `-` when nobody is known."""
        caller = (scope.get("state") or {}).get("caller")
        if caller is None:
            from deepops_infra.server.app import bearer

            auth = next((v.decode("latin-1") for k, v in scope.get("headers") or () if k == b"authorization"), "")
            token = bearer(auth)
            caller = self.server.cached_caller(token)[1] if token else None
        return caller.name if caller is not None else "-"


def configure(level: str) -> None:
    """The `deepops` loggers to stderr at `level`, one line per record, times in UTC."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger("deepops")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
