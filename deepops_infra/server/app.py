"""The team server's HTTP API over the same lifecycle code as the CLI (`create_app`)."""

import asyncio
import gc
import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepops_infra.config import Settings
from deepops_infra.errors import DeepopsError, NotFoundError, UserError
from deepops_infra.ledger import quickread, store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import AuditEntry
from deepops_infra.server import identity
from deepops_infra.server.edge import Refusals
from deepops_infra.server.identity import Caller
from deepops_infra.server.listing import KeptConnections, Listing, Unavailable
from deepops_infra.server.problems import Problem, problem_response, status_for
from deepops_infra.server.settings import ServerSettings
from deepops_infra.service.access import LISTERS, scope  # LISTERS: the roles that may list machines
from deepops_infra.views import MachineView, machine_json
from deepops_infra.yamlfile import FileError

STATIC = Path(__file__).parent / "static"
API = "/api/v1"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
LIST_PATH = API + "/machines"
# A token's caller is kept this long: a revoke, role change or disabled user through this server
# clears the cache at once; one made elsewhere (the local CLI, another replica) holds within this bound.
AUTH_CACHE_SECONDS = 5.0
WORKERS = 4  # processes running launches (each a play or a Pulumi update at a time)
RELEASE_WORKERS = 2  # and releases, apart: a release never waits behind a queue of launches
STOP_GRACE_SECONDS = 30.0  # on stop, what a launch or release in flight gets to finish (the unit allows 60)
Label = Annotated[str, Field(min_length=1, max_length=63)]


class MachineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpus: str | None = Field(None, max_length=32, description="MODEL:COUNT, MODEL, or 0 for CPU only")
    cloud: str | None = Field(None, max_length=16)
    region: str | None = Field(None, max_length=64)
    host: str | None = Field(None, max_length=128)
    image: str | None = Field(None, max_length=64)
    spot: bool | None = None
    ttl: str | None = Field(None, max_length=16)
    idle_timeout: str | None = Field(None, max_length=16)
    disk: int | None = Field(None, ge=1, le=65536)
    owner: Label | None = Field(None, description="team-admin and it-admin only")
    team: Label | None = None
    project: Label | None = None
    name: str | None = Field(None, max_length=64)
    like: str | None = Field(None, max_length=64, description="an earlier machine you may see: same pin, GPUs, target")
    image_pin: str | None = Field(None, max_length=512, description="refuse unless the image pins exactly this now")
    wait: str | None = Field(None, max_length=16, description="Slurm clusters: how long a job may wait to start")
    keep_on_failure: bool = Field(False, description="leave a failed machine up for debugging (end it with DELETE)")
    dry_run: bool = False


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: str = Field(max_length=16)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Label | None = Field(None, description="it-admin only: another person (created when new)")
    team: Label | None = None
    role: Literal["member", "team-admin", "it-admin", "finance"] | None = None
    ttl: str | None = Field(None, max_length=16)
    label: str | None = Field(None, max_length=64)


class HostIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=128)
    detect: bool = Field(False, description="detect the host's GPUs now (also proves it is reachable)")


class RateLimiter:
    """A token bucket per caller key (the token's hash, or the client address)."""

    MAX_KEYS = 10_000  # beyond this, full buckets (as good as none) are dropped

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def allow(self, key: str) -> float:
        """0 when allowed (and counted), else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens = self._level(key, now)
            if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
                self._buckets = {k: v for k, v in self._buckets.items() if self._level(k, now) < self.burst}
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """The seconds until `key` would be allowed, without counting anything."""
        with self._lock:
            tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class Server:
    """What the handlers share: settings, the ledger, the launch and release worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = ServerSettings.load(settings)
        settings.ensure_home()
        self.ledger = Ledger(settings.ledger_url)
        import multiprocessing

        from deepops_infra.server import worker

        def pool(size: int) -> worker.Workers:
            # spawned (never a fork of a threaded server); processes start as tasks need them
            spawn = multiprocessing.get_context("spawn")
            return worker.Workers(size, mp_context=spawn, initializer=worker.start, initargs=(os.getpid(),))

        self.workers = pool(WORKERS)
        self.workers.submit(worker.warm)
        self.releasers = pool(RELEASE_WORKERS)
        self._releasers_warm = False
        self.limiter = RateLimiter(self.config.rate_per_second, self.config.burst)
        self.refused = RateLimiter(self.config.rate_per_second, self.config.burst)  # 401s per address
        self.refusals = Refusals()  # what is refused before anyone is identified: counted, not audited
        from deepops_infra.server.metrics import ServerMetrics

        self.metrics = ServerMetrics(self)  # GET /metrics (server/metrics.py)
        self.stop = threading.Event()
        self.reads = KeptConnections(self.ledger.url)
        self.listing = Listing(self.reads, self.config.list_cache_seconds)
        self._auth_cache: dict[str, tuple[float, Caller | None]] = {}
        from deepops_infra.server.token_use import TokenUse

        self.token_use = TokenUse()
        self.oidc = None
        if self.config.oidc is not None:
            from deepops_infra.server.oidc import OidcVerifier

            self.oidc = OidcVerifier(self.config.oidc)

    def warm_releasers(self) -> None:
        """Start a release worker when the first launch is asked for: what is launched is released
        later, and that release should not also wait for a process to start and import the lifecycle."""
        if not self._releasers_warm:
            self._releasers_warm = True
            from deepops_infra.server import worker

            self.releasers.submit(worker.warm)

    def knows(self, token: str | None) -> bool:
        """Whether `token` is a valid one this process checked lately (no I/O)."""
        return token is not None and self.cached_caller(token)[1] is not None

    def cached_caller(self, token: str) -> tuple[bool, Caller | None]:
        """(found, caller) from the cache alone: no database, safe on the event loop."""
        hit = self._auth_cache.get(identity.hash_token(token))
        if hit is None or time.monotonic() - hit[0] >= AUTH_CACHE_SECONDS:
            return False, None
        who = hit[1]
        return True, (who if who is None or who.expires_at > store.now() else None)

    def authenticate(self, token: str) -> Caller | None:
        """The token's caller, looked up at most every AUTH_CACHE_SECONDS per token (revoking
        through this server clears the cache at once; expiry is checked on every request)."""
        key = identity.hash_token(token)
        now = time.monotonic()
        hit = self._auth_cache.get(key)
        if hit is not None and now - hit[0] < AUTH_CACHE_SECONDS:
            who = hit[1]
        else:
            if self._is_oidc(token):
                who = self._oidc_caller(token)
            else:
                with self.ledger.read() as session:
                    who = identity.authenticate(session, token, store.now())
            self._remember(key, now, who)
        if who is not None and who.expires_at <= store.now():
            return None
        return who

    async def caller(self, token: str) -> Caller | None:
        """authenticate() for the event loop: the cache, else one quick read on a kept connection
        (no ORM, no thread of the request pool); OIDC and ledgers quickread cannot serve take the
        ORM path in a thread."""
        found, who = self.cached_caller(token)
        if found:
            return who
        if not self._is_oidc(token):
            if not identity.could_be_token(token):
                return None
            key, asked = identity.hash_token(token), time.monotonic()
            try:
                row = await self.reads.read(quickread.read_token, key)
            except Unavailable:
                pass
            else:
                now = store.now()
                who = None if row is None else identity.caller_of(row.id, row.expires_at, row.revoked_at, row, now)
                self._remember(key, asked, who)
                return who
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.authenticate, token)

    def _is_oidc(self, token: str) -> bool:
        return self.oidc is not None and not token.startswith(identity.TOKEN_PREFIX)

    def _remember(self, key: str, asked: float, who: Caller | None) -> None:
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        self._auth_cache[key] = (asked, who)

    def _oidc_caller(self, token: str) -> Caller | None:
        """A caller from a valid JWT whose claims name a user, a team and a known role."""
        assert self.oidc is not None
        claims = self.oidc.claims(token)
        if claims is None:
            return None
        cfg = self.oidc.settings
        name, team, role = (claims.get(k) for k in (cfg.user_claim, cfg.team_claim, cfg.role_claim))
        if not all(isinstance(v, str) for v in (name, team, role)) or role not in identity.ROLES:
            return None
        try:
            from deepops_infra.request import check_label

            check_label("user", str(name))
            check_label("team", str(team))
        except DeepopsError:
            return None
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return Caller(name=str(name), team=str(team), role=str(role), expires_at=expires)

    def forget_tokens(self) -> None:
        self._auth_cache.clear()

    def service(self) -> Any:
        """The machines service over the server's ledger (one per request: providers hold no
        state across requests and threads)."""
        from deepops_infra.service.machines import Machines

        return Machines(self.settings, self.ledger)


class LimitsAndAudit:
    """Rate limit and body-size limit before anything runs, the audit entry after every mutating
    API request. Plain ASGI (not BaseHTTPMiddleware, which costs a task and a stream per request)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool

        server, request = self.server, Request(scope)
        path, method = scope["path"], scope["method"]
        auth = request.headers.get("authorization", "")
        address = "ip:" + (request.client.host if request.client else "?")
        wait, why = server.limiter.allow(identity.hash_token(auth) if auth else address), "rate limit"
        if not wait and auth and not server.knows(bearer(auth)):
            # Refused tokens count against the address, so made-up tokens cannot each get a
            # fresh budget (and a database lookup) of their own.
            wait, why = server.refused.wait(address), "too many refused tokens from your address"
        if wait:
            refusal: Response | None = problem_response(
                429, f"{why}: retry in {wait:.1f}s", path, {"Retry-After": str(max(1, round(wait)))}
            )
        elif method in MUTATING and _too_large(request, server.config.max_body_bytes):
            limit = server.config.max_body_bytes
            refusal = problem_response(413, f"request bodies are limited to {limit} bytes (with Content-Length)", path)
        else:
            refusal = None
        audited = not (method in MUTATING and path.startswith(API))

        async def audit(status: int) -> None:
            # Who did what: a refusal before anyone was identified, and a rate-limited request,
            # is counted instead (a flood of them costs no database write).
            nonlocal audited
            if audited:
                if status in (401, 429):
                    server.refusals.add(status)
                return
            audited = True
            caller: Caller | None = getattr(request.state, "caller", None)
            if caller is None and status >= 400 and status not in (401, 429):
                caller = await self._identified(auth, address)  # refused before the token was checked
            if status == 429 or (caller is None and status >= 400):
                server.refusals.add(status)
                return
            await run_in_threadpool(_audit, server, request, caller, status)

        async def send_after_audit(message: Any) -> None:
            # The entry is written before the client sees the answer, so an answer implies its entry;
            # and no listing read before a change is reused after the client heard of it.
            if message["type"] == "http.response.start":
                if message["status"] == 401:
                    server.refused.allow(address)
                if method in MUTATING:
                    server.listing.invalidate()
                await audit(message["status"])
            await send(message)

        if refusal is None and method == "GET" and path == LIST_PATH and not scope.get("query_string"):
            body = await self._saved_listing(auth)
            if body is not None:  # the hottest request, answered without the framework's machinery
                await Response(body, media_type="application/json")(scope, receive, send)
                return
        try:
            if refusal is not None:
                await refusal(scope, receive, send_after_audit)
            else:
                await self.app(scope, receive, send_after_audit)
        finally:
            await audit(500)  # no answer was started: the request failed inside

    async def _identified(self, auth: str, address: str) -> Caller | None:
        """The caller of a request refused before its token was checked (a body too large, not
        JSON); a token that turns out unknown counts against the address like a 401."""
        token = bearer(auth)
        if token is None:
            return None
        who = await self.server.caller(token)
        if who is None:
            self.server.refused.allow(address)
        return who

    async def _saved_listing(self, auth: str) -> bytes | None:
        """GET /machines's saved answer for this caller's scope, when the token is valid (cached, or
        one quick read), its role lists machines and the answer is fresh; else None and the request
        takes the full path, which refuses, or reads and saves."""
        token = bearer(auth)
        if token is None:
            return None
        who = await self.server.caller(token)
        if who is None or who.role not in LISTERS:
            return None
        self.server.token_use.note(who.token_id, self.server.ledger)
        return self.server.listing.saved(include_ended=False, where=listing_scope(who))


def bearer(auth: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = auth.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def listing_scope(who: Caller) -> dict[str, str]:
    """Which machines GET /machines shows a caller: a member their own, a team-admin the team's."""
    return scope(who)


def _name_shared(exc: NotFoundError, ref: str) -> None:
    """A name several of the caller's own machines share (looked up within what they see) is
    refused with their IDs; any other miss stays "not visible to you"."""
    if str(exc) != str(quickread.no_machine(ref)):
        raise Problem(404, str(exc)) from None


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at else None


def stored_price(m: Any) -> dict[str, str]:
    """The price as the ledger keeps it, for the client's `deepops show` to print as the local one does."""
    return {"price_per_hour_stored": str(m.price_per_hour)}


class _App(FastAPI):
    """FastAPI with `Edge` outside everything, even the error handler's 500s, and the access log
    (server/accesslog.py) just inside it."""

    proxies: tuple[Any, ...] = ()

    def build_middleware_stack(self) -> Any:
        from deepops_infra.server.accesslog import AccessLog
        from deepops_infra.server.edge import Edge

        logged = AccessLog(super().build_middleware_stack(), self.state.server, lambda: self.router.routes)
        return Edge(logged, self.proxies)


def create_app(settings: Settings | None = None, *, reaper: bool = False, metrics: str = "public") -> FastAPI:
    """The API and the web page. With `reaper`, a reaper cycle runs every server.reaper_interval
    in this process; the reaper's per-machine locks keep it from acting beside another reaper.
    `metrics`: who may read GET /metrics (public, token or off: server/metrics.py)."""
    from contextlib import asynccontextmanager

    server = Server(settings or Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        thread = None
        if reaper:
            from deepops_infra.server.reaper_loop import run_reaper_loop

            thread = threading.Thread(target=run_reaper_loop, args=(server,), name="deepops-reaper", daemon=True)
            thread.start()
        # What is loaded by now lives as long as the process: out of the cyclic collector's sight,
        # so its full collections stay short under load (they otherwise walk every module's objects).
        gc.collect()
        gc.freeze()
        yield
        server.stop.set()
        from deepops_infra.server import worker

        # In a thread: a launch finishing within the grace period still records its outcome.
        await asyncio.to_thread(worker.stop, [server.workers, server.releasers], STOP_GRACE_SECONDS)
        server.reads.close()
        server.token_use.flush(server.ledger)
        if thread is not None:
            thread.join(timeout=30)

    app = _App(
        title="deepops team server",
        version="1",
        description="Ephemeral GPU machines for a team: request, list, extend and release them; offers, "
        "costs and budgets; pool and policy administration. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: /docs below is served from here
        redoc_url=None,
    )
    app.proxies = server.config.trusted_proxies
    app.state.server = server

    # -- errors as problem details -------------------------------------------------------------

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.detail, request.url.path, exc.headers, **exc.extra)

    @app.exception_handler(DeepopsError)
    async def _deepops(request: Request, exc: DeepopsError) -> Response:
        return problem_response(status_for(exc), str(exc).strip().splitlines()[0], request.url.path)

    @app.exception_handler(FileError)
    async def _file(request: Request, exc: FileError) -> Response:
        return problem_response(500, f"server configuration: {exc}", request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200]} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        detail = f"{'.'.join(first['loc'][1:]) or 'body'}: {first['msg']}"
        return problem_response(422, detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(exc.status_code, str(exc.detail), request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return problem_response(500, f"internal error ({type(exc).__name__})", request.url.path)

    # -- limits and audit ------------------------------------------------------------------------

    app.add_middleware(LimitsAndAudit, server=server)

    # -- identity --------------------------------------------------------------------------------

    async def caller(request: Request) -> Caller:
        # async: a cached token is checked on the event loop, a miss with one quick read.
        token = bearer(request.headers.get("authorization", ""))
        if token is None:
            raise Problem(
                401, "send `Authorization: Bearer <token>` (see `deepops login`)", {"WWW-Authenticate": "Bearer"}
            )
        who = await server.caller(token)
        if who is None:
            raise Problem(401, "the token is unknown, expired or revoked", {"WWW-Authenticate": "Bearer"})
        request.state.caller = who
        server.token_use.note(who.token_id, server.ledger)
        return who

    Who = Annotated[Caller, Depends(caller)]

    def need(who: Caller, *roles: str) -> None:
        if who.role not in roles:
            raise Problem(403, f"role {who.role} may not do this (needs {' or '.join(roles)})")

    def seen(who: Caller, ref: str, find: Any) -> Any:
        """What `find()` finds for `ref`, when the caller may see it; else 404 (another's machine
        is not even named). Names are looked up among the caller's machines only."""
        from deepops_infra.service.machines import visible

        need(who, *LISTERS)
        return visible(who, ref, find)

    @app.get(API + "/me", tags=["identity"], summary="Who the token belongs to")
    def me(who: Who) -> dict[str, Any]:
        return {"user": who.name, "team": who.team, "role": who.role, "token": who.token_id}

    # -- machines --------------------------------------------------------------------------------

    @app.get(
        API + "/machines", tags=["machines"], summary="List machines you may see", response_model=list[dict[str, Any]]
    )
    async def list_machines(
        who: Who,
        all: Annotated[bool, Query(description="Include machines that have ended")] = False,
        owner: Annotated[str | None, Query(max_length=63)] = None,
    ) -> Response:
        from starlette.concurrency import run_in_threadpool

        need(who, *LISTERS)
        at = datetime.now(UTC)
        where = listing_scope(who)
        if owner and where.setdefault("owner", owner) != owner:
            return JSONResponse([])  # a member asking for someone else's machines sees none
        body = await server.listing.machines_json(at, include_ended=all, where=where)
        if body is not None:
            return Response(body, media_type="application/json")
        return await run_in_threadpool(orm_list, who, all, owner, at)

    def orm_list(who: Caller, all: bool, owner: str | None, at: datetime) -> Response:
        listed = server.service().list_machines(who, include_ended=all, owner=owner, at=at)
        return JSONResponse([m.to_json() for m in listed])

    @app.get(API + "/machines/{ref}", tags=["machines"], summary="One machine with its manifest and events")
    async def show_machine(who: Who, ref: str) -> dict[str, Any]:
        # What clients poll while a machine comes up: one quick read on a kept connection, like the
        # listing; the ORM (in a thread) when quickread cannot serve the ledger.
        from starlette.concurrency import run_in_threadpool

        need(who, *LISTERS)
        try:
            m, spent, history = await server.reads.read(quickread.find_machine, ref, store.now(), listing_scope(who))
        except Unavailable:
            return await run_in_threadpool(orm_show, who, ref)
        except NotFoundError as exc:
            _name_shared(exc, ref)
            m, spent, history = None, None, []
        shown = seen(who, ref, lambda: m)
        return MachineView.of(shown, spent, history).detail_json() | stored_price(shown)

    def orm_show(who: Caller, ref: str) -> dict[str, Any]:
        shown = server.service().show(ref, who)
        return shown.detail_json() | stored_price(shown)

    @app.post(API + "/machines", tags=["machines"], status_code=202, summary="Request a machine")
    def request_machine(who: Who, body: MachineIn, request: Request, response: Response) -> dict[str, Any]:
        """Validated, planned and recorded before this answers (202); provisioning goes on in the
        server. Poll GET /machines/{id} until `ready` or `failed`. With dry_run, only the plan."""
        from deepops_infra.service.machines import MachineOrder

        need(who, "member", "team-admin", "it-admin")
        service = server.service()
        order = MachineOrder(**body.model_dump(exclude={"dry_run", "keep_on_failure"}))
        planned = service.plan(order, who)  # on the caller's behalf: their policy, their machines
        plan = planned.summary()
        if body.dry_run:
            service.admit(planned)  # refused as the real request would be
            response.status_code = 200
            return {"plan": plan, "image": planned.image.name, "gpus": str(planned.request.gpus)}
        machine = service.record(planned)
        request.state.target = machine.id
        from deepops_infra.server import worker

        worker.submit_launch(server.workers, server.ledger, str(server.settings.home), machine.id, body.keep_on_failure)
        server.warm_releasers()
        response.headers["Location"] = f"{API}/machines/{machine.id}"
        return machine_json(machine, None) | {"plan": plan}

    @app.post(API + "/machines/{ref}/extend", tags=["machines"], summary="Push a machine's expiry back")
    def extend_machine(who: Who, ref: str, body: ExtendIn, request: Request) -> dict[str, Any]:
        service = server.service()
        m = service.get_machine(ref, who)
        request.state.target = m.id
        return service.extend(m.id, body.ttl, who).to_json()  # type: ignore[no-any-return]

    @app.delete(API + "/machines/{ref}", tags=["machines"], summary="Release a machine")
    def release_machine(who: Who, ref: str, request: Request) -> dict[str, Any]:
        service = server.service()
        m = service.get_machine(ref, who)
        request.state.target = m.id
        service.releasable([m.id], who)  # refused when it ended already
        from deepops_infra.server import worker

        reason = "released by " + who.name + " (team server)"
        return server.releasers.submit(worker.release, str(server.settings.home), m.id, reason).result()

    # -- offers, policy, pool ---------------------------------------------------------------------

    @app.get(API + "/offers", tags=["offers"], summary="GPU offers: the clouds' catalog and the on-prem pool")
    def offers(
        who: Who,
        cloud: Annotated[str | None, Query(max_length=16)] = None,
        accelerator: Annotated[str | None, Query(max_length=32)] = None,
    ) -> dict[str, Any]:
        from deepops_infra.accelerators import canonical_model, model_allows
        from deepops_infra.catalog import load_catalog
        from deepops_infra.pool import load_pool

        need(who, "member", "team-admin", "it-admin")
        items = load_catalog(server.settings.home)
        if cloud:
            items = [o for o in items if o.cloud == cloud]
        if accelerator:
            model = canonical_model(accelerator)
            if model is None:
                raise UserError(f"accelerator: unknown GPU model {accelerator!r}")
            items = [o for o in items if model_allows(model, o.accelerator)]
        items.sort(key=lambda o: (o.price_per_hour is None, o.price_per_hour or 0, o.cloud, o.region, o.instance_type))
        pool = load_pool(server.settings.pool_path)
        return {
            "cloud": [o.to_json() for o in items],
            "onprem": [h.to_dict() for h in pool.hosts] if cloud in (None, "onprem") else [],
        }

    @app.get(API + "/policy", tags=["policy"], summary="What you may request: your team's policy, images, hosts")
    def policy(who: Who) -> dict[str, Any]:
        from deepops_infra.images import load_images
        from deepops_infra.pool import load_pool

        config = server.settings.config
        teams = {who.team: config.policy_for(who.team)}
        if who.role == "it-admin":
            teams |= config.team_policies | {"(default)": config.default_policy}
        pool = load_pool(server.settings.pool_path)
        return {
            "team": who.team,
            "defaults": config.defaults.__dict__,
            "policies": {name: _policy_json(p) for name, p in teams.items()},
            "images": [
                {"name": i.name, "gpu_required": i.gpu_required, "description": getattr(i, "description", "")}
                for i in load_images().values()
            ],
            "hosts": [
                {"name": h.name, "gpus": len(h.declared_gpus) if h.declared_gpus is not None else None}
                for h in pool.hosts
            ],
        }

    @app.get(API + "/pool", tags=["pool"], summary="On-prem pool hosts and their live leases (it-admin)")
    def pool_ls(who: Who, detect: bool = False) -> list[dict[str, Any]]:
        from deepops_infra.service import pool

        return pool.list_hosts(server.settings, server.ledger, who, detect=detect)

    @app.post(API + "/pool/hosts", tags=["pool"], status_code=201, summary="Add a pool host (it-admin)")
    def pool_add(who: Who, body: HostIn, request: Request) -> dict[str, Any]:
        from deepops_infra.service import pool

        request.state.target = body.name
        entry = body.model_dump(exclude_none=True, exclude={"detect"})
        return pool.add_host(server.settings, server.ledger, entry, who, detect=body.detect)

    @app.delete(API + "/pool/hosts/{name}", tags=["pool"], summary="Remove a pool host (it-admin)")
    def pool_rm(who: Who, name: str, request: Request, force: bool = False) -> dict[str, Any]:
        from deepops_infra.service import pool

        request.state.target = name
        try:
            return pool.remove_host(server.settings, server.ledger, name, who, force=force)
        except pool.HostBusy as exc:
            raise Problem(409, str(exc)) from None

    from deepops_infra.server.policy_admin import register_policy_admin  # GET|PUT|DELETE /policy/teams

    register_policy_admin(app, server, Who, need)

    from deepops_infra.server.metrics import register_operations  # GET /metrics, /readyz

    register_operations(app, server, Who, metrics)

    # -- costs and budgets -----------------------------------------------------------------------

    @app.get(API + "/costs", tags=["costs"], summary="Cost report (json, csv, html or table rows)")
    def costs(
        who: Who,
        by: Annotated[list[str] | None, Query(max_length=6)] = None,
        month: Annotated[str | None, Query(max_length=7)] = None,
        since: Annotated[str | None, Query(max_length=32)] = None,
        until: Annotated[str | None, Query(max_length=32)] = None,
        format: Literal["json", "csv", "html", "table"] = "json",
        idle: Literal["separate", "share"] = "separate",
    ) -> Any:
        from deepops_infra.costs import render
        from deepops_infra.costs.period import Period
        from deepops_infra.costs.report import build, validate_by

        need(who, "finance", "team-admin", "it-admin")
        groups = validate_by(by or ["team"])
        period = Period.from_options(month, since, until, datetime.now(UTC))
        report = build(server.ledger, period, groups, details=format == "html", idle=idle)
        if who.role == "team-admin":
            report = _only_team(report, who.team)
        if format == "csv":
            return PlainTextResponse(render.to_csv(report), media_type="text/csv")
        if format == "html":
            from deepops_infra.costs import budgets as budget_mod
            from deepops_infra.costs.html import render_html

            budget_mod.mark_budgets(report, budget_mod.load(server.settings.config))
            return HTMLResponse(render_html(report))
        if format == "table":
            columns, rows = render.table_rows(report)
            return {"title": render.table_title(report), "columns": columns, "rows": rows}
        return report.to_json()

    @app.get(API + "/budgets", tags=["costs"], summary="Spend against the monthly budgets")
    def budgets(who: Who, month: Annotated[str | None, Query(max_length=7)] = None) -> dict[str, Any]:
        from deepops_infra.service.budgets import budget_report

        need(who, "finance", "team-admin", "it-admin")
        return budget_report(server.settings, server.ledger, month, who).to_json()

    # -- tokens and audit --------------------------------------------------------------------------

    @app.post(API + "/tokens", tags=["identity"], status_code=201, summary="Create an API token (shown once)")
    def create_token(who: Who, body: TokenIn, request: Request) -> dict[str, Any]:
        from deepops_infra.durations import parse_duration

        user = body.user or who.name
        if (user != who.name or body.role or body.team) and who.role != "it-admin":
            raise Problem(403, "only an it-admin creates tokens for others or sets roles and teams")
        ttl = parse_duration(body.ttl, "ttl") if body.ttl is not None else server.config.token_ttl
        with server.ledger.write() as session:
            row = identity.ensure_user(session, user, body.team, body.role)
            token, secret = identity.create_token(session, row, ttl, body.label)
            out = identity.token_json(token, store.now(), row) | {"token": secret}
        request.state.target = out["id"]
        request.state.audit_detail = f"for {row.name} ({row.role}, team {row.team})"
        return out

    @app.get(API + "/tokens", tags=["identity"], summary="Tokens (yours; every one for an it-admin)")
    def list_tokens(who: Who) -> list[dict[str, Any]]:
        now = store.now()
        server.token_use.flush(server.ledger)  # the last uses this process has noted so far
        with server.ledger.read() as session:
            rows = identity.list_tokens(session, None if who.role == "it-admin" else who.name)
            return [identity.token_json(t, now, u) for t, u in rows]

    @app.delete(API + "/tokens/{token_id}", tags=["identity"], summary="Revoke a token")
    def revoke_token(who: Who, token_id: str, request: Request) -> dict[str, Any]:
        request.state.target = token_id
        with server.ledger.write() as session:
            from deepops_infra.ledger.schema import ApiToken

            row = session.get(ApiToken, token_id)
            if row is None or (row.user_name != who.name and who.role != "it-admin"):
                raise Problem(404, f"no token {token_id!r} of yours")
            row = identity.revoke_token(session, token_id, store.now())
            out = identity.token_json(row, store.now())
        server.forget_tokens()
        return out

    from deepops_infra.server.admin import register_admin  # users, audit log, pool GPUs (it-admin)

    register_admin(app, server, Who, need)
    from deepops_infra.server.sessions import register_sessions  # ssh keys, endpoints, WS sessions

    register_sessions(app, server, Who)
    from deepops_infra.server.jobs import register_jobs  # a machine's jobs and their logs (deepops exec)

    register_jobs(app, server, Who)

    # -- the web page ------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=_page_headers())

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """The operations of /openapi.json, listed by a script of this server (nothing from a CDN)."""
        return FileResponse(STATIC / "docs.html", headers=_page_headers())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        allowed = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if name not in allowed:
            raise Problem(404, f"no file {name!r}")
        return FileResponse(allowed[name], headers=_page_headers())

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-src 'self' blob:; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _too_large(request: Request, limit: int) -> bool:
    length = request.headers.get("content-length")
    if length is None:
        return "chunked" in request.headers.get("transfer-encoding", "")
    try:
        return int(length) > limit
    except ValueError:
        return True


def _audit(server: Server, request: Request, caller: Caller | None, status: int) -> None:
    route = request.scope.get("route")
    action = getattr(route, "name", None) or "unknown"
    target = getattr(request.state, "target", None) or (request.path_params or {}).get("ref")
    outcome = "ok" if status < 400 else ("refused" if status < 500 else "error")
    entry = AuditEntry(
        at=store.now(),
        actor=caller.name if caller else None,
        role=caller.role if caller else None,
        method=request.method,
        path=request.url.path[:255],
        action=action[:64],
        target=str(target)[:128] if target else None,
        status_code=status,
        outcome=outcome,
        client=(request.client.host if request.client else None),
        detail=getattr(request.state, "audit_detail", None),
    )
    with server.ledger.write() as session:
        session.add(entry)


def _policy_json(p: Any) -> dict[str, Any]:
    return {
        "targets": list(p.targets),
        "gpu_models": list(p.gpu_models),
        "max_gpus_running": p.max_gpus_running,
        "max_ttl_seconds": int(p.max_ttl.total_seconds()),
        "default_ttl_seconds": int(p.default_ttl.total_seconds()),
        "default_idle_timeout_seconds": int(p.default_idle_timeout.total_seconds()),
        "max_idle_timeout_seconds": int(p.max_idle_timeout.total_seconds()),
    }


def _only_team(report: Any, team: str) -> Any:
    """A team-admin's report: only rows whose team is theirs (the report must be grouped by team)."""
    if "team" not in report.by:
        raise Problem(403, "a team-admin's reports are grouped by team (add by=team)")
    from deepops_infra.costs.report import Row

    rows = [r for r in report.rows if r.keys.get("team") == team]
    total = Row(keys={})
    for r in rows:
        total.add(r)
    return replace(report, rows=rows, total=total, top_machines=[], series=[], idle_by_team=[])
