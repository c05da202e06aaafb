"""Where a request meets the server: who sent it, and the headers every answer carries.

The client address is the TCP peer, unless the peer is one of `server.trusted_proxies`; then it is
the right-most address of X-Forwarded-For that none of those proxies added (what the client wrote
to the left of it is not believed). With no proxies configured (the default) the header means
nothing, so no local process can pick its own rate-limit bucket or audit address. `Edge` applies
this once, as the outermost layer, so the rate limit, the audit log and everything after them
read the same `request.client`. uvicorn's own proxy-header handling is off (`deepops serve`).

Every answer is `Cache-Control: no-store` (tokens, costs and machine lists have no business in a
cache), `nosniff`; HTML answers carry a CSP that forbids framing them.
"""

import threading
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from starlette.datastructures import MutableHeaders

Network = IPv4Network | IPv6Network
HTML_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: IPv4Address | IPv6Address, proxies: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: list[str], proxies: tuple[Network, ...]) -> str:
    """The client's address: `peer`, or behind trusted proxies the right-most untrusted
    X-Forwarded-For entry (all headers' entries in order). An entry that is not an address stops
    the walk at the last trusted hop: a proxy that forwards garbage is not trusted with more."""
    if peer is None:
        return "?"
    seen = _address(peer)
    if not proxies or seen is None or not _trusted(seen, proxies):
        return peer
    address = peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        parsed = _address(hop)
        if parsed is None:
            break
        address = str(parsed)
        if not _trusted(parsed, proxies):
            break
    return address


class Refusals:
    """Refusals the audit log leaves out, by status: every 401 and 429, and any other refusal of a
    mutating API request whose caller is unknown (no token, a bad one). Counted here, not written,
    so a flood costs no database write; GET /metrics exports them (server/metrics.py)."""

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def add(self, status: int) -> None:
        with self._lock:
            self._counts[status] += 1

    def counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._counts)


class Edge:
    """The outermost ASGI layer: the client address from trusted proxies, and the headers on every
    answer (error pages of the framework's own included)."""

    def __init__(self, app: Any, proxies: tuple[Network, ...]) -> None:
        self.app, self.proxies = app, proxies

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.proxies:
            self._resolve(scope)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", ()))
                secure(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _resolve(self, scope: Any) -> None:
        peer = scope.get("client")
        seen = _address(peer[0]) if peer else None
        if seen is None or not _trusted(seen, self.proxies):
            return
        headers = scope.get("headers") or []
        forwarded = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
        scope["client"] = (client_address(peer[0], forwarded, self.proxies), peer[1])
        proto = [v.decode("latin-1").strip().lower() for k, v in headers if k == b"x-forwarded-proto"]
        if proto and proto[-1] in ("http", "https"):  # the scheme the client used with the proxy
            scope["scheme"] = proto[-1]


def secure(headers: MutableHeaders) -> None:
    """No answer is kept by a cache; HTML is never framed nor sniffed into something else."""
    headers["Cache-Control"] = "no-store"
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if headers.get("content-type", "").startswith("text/html"):
        csp = headers.get("content-security-policy")
        if csp is None:
            headers["Content-Security-Policy"] = HTML_CSP
        elif "frame-ancestors" not in csp:
            headers["Content-Security-Policy"] = csp.rstrip("; ") + "; frame-ancestors 'none'"
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "no-referrer")
