"""Sessions into machines through the team server: users hold no pool key, the server does.

`WS /api/v1/machines/{ref}/session?key=FINGERPRINT` (the user's token as bearer): the server
checks that the caller may open the machine (its owner, a team-admin of its team, an it-admin;
anyone else gets 404), starts the machine's `sshd -i` with its own keys (the provider's
session_command, letting in only the caller's registered key with that fingerprint), sends the
session's host key as the first (text) message, then carries the SSH bytes both ways. The token
is checked again every few seconds: a revoked or expired token, or a disabled user, ends the
session. Opening, refusing and ending a session are written to the audit log.

`POST /api/v1/me/ssh-keys` registers a public key; `GET /api/v1/machines/{ref}/connect` and
`GET /api/v1/connect` tell a client the Unix user each machine's sshd runs as (ssh-config).
"""

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Query, Request, Response, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from deepops_infra.errors import DeepopsError, NotFoundError, UserError
from deepops_infra.ledger import store
from deepops_infra.ledger.schema import AuditEntry, Machine, SshKey
from deepops_infra.server.problems import Problem, problem_response, status_for

if TYPE_CHECKING:
    from deepops_infra.server.app import Server
    from deepops_infra.server.identity import Caller

API = "/api/v1"
OPENERS = ("member", "team-admin", "it-admin")  # and of those, only who sees the machine
RECHECK_SECONDS = 2.0  # how often an open session's token is checked again
HEADER_SECONDS = 60.0  # for the machine's sshd to start (an SSH pool host: one ssh connection first)
CHUNK = 256 * 1024
REVOKED = 4401  # close code: the token was revoked or expired, or the user disabled
KEY_UNKNOWN = "ssh-key-unknown"
# A well-formed key that opens nothing: the session command it builds only tells the Unix user.
PLACEHOLDER_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(32)).decode()


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=1, max_length=16384, description="an OpenSSH public key line")


def _visible(server: "Server", who: "Caller", ref: str) -> Machine:
    """The machine when the caller may open sessions into it; 404 otherwise (even for a role
    that may not, so another's machine is never named)."""
    if who.role not in OPENERS:
        raise Problem(404, f"no machine {ref!r} visible to you")
    try:
        return server.service().get_machine(ref, who)  # type: ignore[no-any-return]
    except NotFoundError as exc:
        raise Problem(404, str(exc)) from None


def _user(server: "Server", m: Machine) -> str:
    """The Unix user the machine's sshd runs as (UserError when it takes no sessions now)."""
    if m.ended_at is not None:
        raise UserError(f"{m.id} is {m.status}; only a running machine takes sessions")
    return server.service().provider_for(m.cloud).session_command(m, PLACEHOLDER_KEY).user  # type: ignore[no-any-return]


def _key(server: "Server", user: str, fingerprint: str | None) -> SshKey | None:
    if not fingerprint:
        return None
    with server.ledger.read() as session:
        return session.scalars(
            select(SshKey).where(SshKey.user_name == user, SshKey.fingerprint == fingerprint)
        ).first()


def _endpoint(server: "Server", m: Machine) -> dict[str, Any]:
    return {"id": m.id, "name": m.name, "owner": m.owner, "user": _user(server, m), "host": f"deepops-{m.id}"}


def _audit(server: "Server", who: "Caller | None", entry: dict[str, Any]) -> None:
    status = entry["status_code"]
    outcome = entry.pop("outcome", None) or ("ok" if status < 400 else ("refused" if status < 500 else "error"))
    with server.ledger.write() as session:
        session.add(
            AuditEntry(
                at=store.now(),
                actor=who.name if who else None,
                role=who.role if who else None,
                method="GET",
                outcome=outcome,
                **entry,
            )
        )


def register_sessions(app: FastAPI, server: "Server", Who: Any) -> None:
    """The key, endpoint and session routes (the session is a WebSocket); `Who` is the app's
    authenticated caller type."""

    @app.post(API + "/me/ssh-keys", tags=["sessions"], status_code=201, summary="Register your public ssh key")
    def add_key(who: Who, body: KeyIn, request: Request, response: Response) -> dict[str, Any]:
        from deepops_infra.connect.keys import fingerprint
        from deepops_infra.connect.lease import check_public_key

        try:
            key = check_public_key(body.public_key)
        except ValueError as exc:
            raise UserError(f"public_key: {exc}") from None
        fp = fingerprint(key)
        request.state.target = fp
        with server.ledger.write() as session:
            found = session.scalars(select(SshKey).where(SshKey.user_name == who.name, SshKey.fingerprint == fp))
            if found.first() is None:
                session.add(SshKey(user_name=who.name, fingerprint=fp, public_key=key, created_at=store.now()))
            else:
                response.status_code = 200
        return {"user": who.name, "fingerprint": fp}

    @app.get(API + "/machines/{ref}/connect", tags=["sessions"], summary="How to reach a machine with ssh")
    def connect(
        who: Who,
        ref: str,
        key: Annotated[str | None, Query(max_length=100, description="your key's fingerprint")] = None,
    ) -> dict[str, Any]:
        m = _visible(server, who, ref)
        return _endpoint(server, m) | {"key_registered": _key(server, who.name, key) is not None}

    @app.get(API + "/connect", tags=["sessions"], summary="The running machines you may open sessions into")
    def connect_all(
        who: Who,
        key: Annotated[str | None, Query(max_length=100, description="your key's fingerprint")] = None,
    ) -> dict[str, Any]:
        from deepops_infra.service.access import scope

        machines = []
        if who.role in OPENERS:
            query = select(Machine).where(Machine.ended_at.is_(None)).order_by(Machine.created_at)
            for column, value in scope(who).items():
                query = query.where(getattr(Machine, column) == value)
            with server.ledger.read() as session:
                rows = list(session.scalars(query))
            for m in rows:
                with contextlib.suppress(DeepopsError):  # not running yet: no session to offer
                    machines.append(_endpoint(server, m))
        return {"machines": machines, "key_registered": _key(server, who.name, key) is not None}

    @app.websocket(API + "/machines/{ref}/session")
    async def session(websocket: WebSocket, ref: str) -> None:
        await Broker(server, websocket, ref).run()


class Broker:
    """One WebSocket session: checked, started, carried, ended; each step in the audit log."""

    def __init__(self, server: "Server", websocket: WebSocket, ref: str) -> None:
        from deepops_infra.server.edge import client_address

        self.server, self.ws, self.ref = server, websocket, ref
        self.path = websocket.url.path
        forwarded = [v for k, v in websocket.headers.items() if k == "x-forwarded-for"]
        peer = websocket.client.host if websocket.client else None
        self.client = client_address(peer, forwarded, server.config.trusted_proxies)[:64]
        self.who: Caller | None = None
        self.target: str | None = None
        self.sent = self.received = 0

    async def audit(self, action: str, status: int, detail: str | None = None, outcome: str | None = None) -> None:
        entry = {
            "path": self.path[:255],
            "action": action,
            "target": (self.target or self.ref)[:128],
            "status_code": status,
            "client": self.client,
            "detail": detail,
            "outcome": outcome,
        }
        await run_in_threadpool(_audit, self.server, self.who, entry)

    async def deny(self, status: int, detail: str, **extra: Any) -> None:
        if self.who is not None and status not in (401, 429):
            await self.audit("ssh_session", status, detail)
        else:
            self.server.refusals.add(status)  # counted, not written (as the HTTP routes' 401s and 429s)
            if status == 401:
                self.server.refused.allow("ip:" + self.client)
        response = problem_response(status, detail, self.path, **extra)
        await self.ws.send_denial_response(response)

    async def run(self) -> None:
        from deepops_infra.server.app import bearer
        from deepops_infra.server.identity import hash_token

        token = bearer(self.ws.headers.get("authorization", ""))
        wait = self.server.limiter.allow(hash_token(token) if token else "ip:" + self.client)
        if not wait and token and not self.server.knows(token):  # made-up tokens share their address's budget
            wait = self.server.refused.wait("ip:" + self.client)
        if wait:
            return await self.deny(429, f"rate limit: retry in {wait:.1f}s")
        self.who = await self.server.caller(token) if token else None
        if self.who is None:
            return await self.deny(401, "send `Authorization: Bearer <token>` with a valid token (see `deepops login`)")
        try:
            argv, user = await run_in_threadpool(self.command)
        except Problem as exc:
            return await self.deny(exc.status, exc.detail, **exc.extra)
        except DeepopsError as exc:
            return await self.deny(status_for(exc), str(exc).strip().splitlines()[0])
        except Exception as exc:  # the ledger or the pool file failed: no session, and say so
            return await self.deny(500, f"internal error ({type(exc).__name__})")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            return await self.deny(502, f"{self.target}: cannot start the session: {exc}")
        errors: deque[str] = deque(maxlen=20)
        drain = asyncio.create_task(_lines(proc.stderr, errors))
        try:
            await self.carry(proc, token or "", user, errors)
        finally:
            await _end(proc)
            drain.cancel()

    def command(self) -> tuple[list[str], str]:
        """The session's argv and Unix user, when the caller may open it with a registered key."""
        assert self.who is not None
        m = _visible(self.server, self.who, self.ref)
        self.target = m.id
        fingerprint = self.ws.query_params.get("key")
        key = _key(self.server, self.who.name, fingerprint)
        if key is None:
            raise Problem(
                409,
                f"your ssh key {fingerprint or '(none given)'} is not registered: `deepops ssh` registers it",
                code=KEY_UNKNOWN,
            )
        if m.ended_at is not None:
            raise UserError(f"{m.id} is {m.status}; only a running machine takes sessions")
        command = self.server.service().provider_for(m.cloud).session_command(m, key.public_key)
        with self.server.ledger.write() as session:
            row = session.get(SshKey, key.id)
            if row is not None:
                row.last_used_at = store.now()
        return command.argv, command.user

    async def carry(self, proc: Any, token: str, user: str, errors: deque[str]) -> None:
        from deepops_infra.connect.lease import parse_header

        try:
            line = await asyncio.wait_for(proc.stdout.readline(), HEADER_SECONDS)
            host_key = parse_header(line)
        except (TimeoutError, ValueError) as exc:
            why = errors[-1] if errors else str(exc) or "timed out"
            return await self.deny(502, f"{self.target}: the session did not start: {why}")
        await self.ws.accept()
        started = time.monotonic()
        await self.audit("ssh_session", 101, f"opened as {user}")
        await self.ws.send_text(json.dumps({"host_key": host_key, "user": user, "machine": self.target}))
        tasks = [
            asyncio.create_task(self.upstream(proc)),
            asyncio.create_task(self.downstream(proc)),
            asyncio.create_task(self.watch(token)),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        try:
            code, reason = next(iter(done)).result()
        except Exception as exc:  # something else broke: say what
            code, reason = 1011, f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            await self.ws.close(code=code if code != 1006 else 1000, reason=reason[:120])
        seconds = time.monotonic() - started
        detail = f"{reason}; {seconds:.1f} s, {self.received} B in, {self.sent} B out"
        outcome = "ok" if code == 1000 else ("refused" if code == REVOKED else "error")
        await self.audit("ssh_session_end", code, detail, outcome)

    async def upstream(self, proc: Any) -> tuple[int, str]:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return 1000, "the client closed the session"
            data = message.get("bytes") or b""
            if data:
                self.received += len(data)
                try:
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):  # the machine's side ended first
                    return 1000, "the session ended"

    async def downstream(self, proc: Any) -> tuple[int, str]:
        while True:
            data = await proc.stdout.read(CHUNK)
            if not data:
                return 1000, "the session ended"
            self.sent += len(data)
            try:
                await self.ws.send_bytes(data)
            except (WebSocketDisconnect, OSError):  # the client went away mid-write: a normal end
                return 1000, "the client closed the session"

    async def watch(self, token: str) -> tuple[int, str]:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            if await self.server.caller(token) is None:
                return REVOKED, "the token was revoked or expired"


async def _lines(stream: Any, into: deque[str]) -> None:
    async for raw in stream:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            into.append(text[:300])


async def _end(proc: Any) -> None:
    """End the session's process group (the pool ssh, or sh and the local sshd)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
