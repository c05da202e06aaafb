"""A WebSocket client for one session through the team server, pumping stdin/stdout (wsproto,
sans-I/O, over a plain or TLS socket): what the ProxyCommand runs in team mode."""

import json
import os
import selectors
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from deepops_infra.errors import NotFoundError, OperationError, UserError

CHUNK = 256 * 1024
# Close codes of the server (deepops_infra/server/sessions.py): why a session ended.
REVOKED = 4401


@dataclass
class Refused(Exception):
    """The server answered the handshake with an HTTP error (its problem detail)."""

    status: int
    detail: str
    problem: dict[str, Any] = field(default_factory=dict)

    def error(self) -> Exception:
        if self.status == 404:
            return NotFoundError(self.detail)
        if self.status < 500:
            return UserError(f"server refused ({self.status}): {self.detail}")
        return OperationError(f"server failed ({self.status}): {self.detail}")


@dataclass
class Session:
    sock: Any
    ws: WSConnection
    pending: list[Any] = field(default_factory=list)  # events read with the handshake's answer

    def send(self, event: Any) -> None:
        self.sock.sendall(self.ws.send(event))

    def events(self) -> list[Any] | None:
        """The next events (the waiting ones, else what one read of the socket completes; maybe
        none); None at the end of the connection."""
        if self.pending:
            events, self.pending = self.pending, []
            return events
        data = self.sock.recv(CHUNK)
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            data += self.sock.recv(self.sock.pending())
        if not data:
            return None
        self.ws.receive_data(data)
        return list(self.ws.events())


def connect(url: str, token: str, timeout: float = 60) -> Session:
    """Open the WebSocket at `url` (http[s]://host/path?query) with the bearer token; Refused
    with the server's problem detail when it answers with an HTTP error."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    raw = socket.create_connection((parts.hostname or "", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname) if secure else raw
    ws = WSConnection(ConnectionType.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    session = Session(sock, ws)
    session.send(
        Request(host=parts.netloc, target=target, extra_headers=[(b"authorization", f"Bearer {token}".encode())])
    )
    status, body = 0, b""
    while True:
        events = session.events()
        if events is None:
            raise OperationError(f"the server closed the connection during the handshake ({url})")
        for i, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                sock.settimeout(None)
                session.pending = events[i + 1 :]
                return session
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise Refused(status, f"HTTP {status}")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    raise Refused(status, *_problem(body, status))


def _problem(body: bytes, status: int) -> tuple[str, dict[str, Any]]:
    try:
        problem = json.loads(body)
    except ValueError:
        return f"HTTP {status}", {}
    if not isinstance(problem, dict):
        return f"HTTP {status}", {}
    return str(problem.get("detail") or problem.get("title") or f"HTTP {status}"), problem


def first_text(session: Session) -> dict[str, Any]:
    """The server's first message: the session's header (JSON), before any byte of SSH."""
    while True:
        events = session.events()
        if events is None:
            raise OperationError("the server closed the session before it started")
        for i, event in enumerate(events):
            if isinstance(event, TextMessage):
                session.pending = events[i + 1 :]
                return dict(json.loads(event.data))
            if isinstance(event, CloseConnection):
                raise OperationError(f"the server ended the session: {event.reason or event.code}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(session: Session, stdin: int = 0, stdout: int = 1) -> tuple[int, str]:
    """Copy stdin to the WebSocket and the WebSocket to stdout until either side ends; the close
    code and reason the server gave (1000 when it ended normally)."""
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(session.sock, selectors.EVENT_READ)
    try:
        while True:
            # events already read come first; else whichever side has bytes
            ready = [session.sock] if session.pending else [key.fileobj for key, _ in selector.select()]
            if stdin in ready:
                data = os.read(stdin, CHUNK)
                if data:
                    session.send(BytesMessage(data=data))
                else:  # the ssh client is done: say so, then read what the server still sends
                    selector.unregister(stdin)
                    session.send(CloseConnection(code=1000))
            if session.sock in ready:
                events = session.events()
                if events is None:
                    return 1006, "the connection to the server was lost"
                for event in events:
                    if isinstance(event, BytesMessage):
                        _write_all(stdout, event.data)
                    elif isinstance(event, Ping):
                        session.send(event.response())
                    elif isinstance(event, CloseConnection):
                        if session.ws.state.name == "REMOTE_CLOSING":
                            session.send(event.response())
                        return event.code, event.reason or ""
    finally:
        selector.close()
        session.sock.close()
