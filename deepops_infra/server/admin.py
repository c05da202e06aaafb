"""Administration through the API (it-admin), and what the request form may offer (anyone who
requests machines).

    GET  /api/v1/users                      users with their role, team, state, tokens, last use
    PUT  /api/v1/users/{name}/role          {"role": ...}  change a role (audited with before -> after)
    PUT  /api/v1/users/{name}/team          {"team": ...}  move a user to another team
    POST /api/v1/users/{name}/disable       refuse all their tokens at once
    POST /api/v1/users/{name}/enable        let their live tokens in again
    GET  /api/v1/audit                      the audit log: since, user, action, limit
    GET  /api/v1/pool/gpus                  pool hosts with free and leased GPUs
    GET  /api/v1/available                  what the caller's request form offers now

A change clears the server's token cache, so it holds at once on this server; another server
process sees it within AUTH_CACHE_SECONDS (deepops_infra/server/app.py).
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from deepops_infra.ledger import store
from deepops_infra.server import accounts

API = "/api/v1"


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["member", "team-admin", "it-admin", "finance"]


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str = Field(min_length=1, max_length=63)


def register_admin(app: FastAPI, server: Any, Who: Any, need: Callable[..., None]) -> None:
    """Add the routes; `Who` is the app's authenticated caller type, `need(caller, *roles)` its role check."""

    def change(who: Any, request: Request, name: str, act: Callable[[Any], accounts.Change]) -> dict[str, Any]:
        need(who, "it-admin")
        request.state.target = name[:128]
        with server.ledger.write() as session:
            done = act(session)
        request.state.audit_detail = done.detail
        server.forget_tokens()  # the change holds from the next request on
        return done.user | {"change": done.detail}

    @app.get(API + "/users", tags=["identity"], summary="Users, their roles, teams and tokens (it-admin)")
    def users_ls(who: Who) -> list[dict[str, Any]]:
        need(who, "it-admin")
        server.token_use.flush(server.ledger)
        with server.ledger.read() as session:
            return accounts.list_users(session, store.now())

    @app.put(API + "/users/{name}/role", tags=["identity"], summary="Change a user's role (it-admin)")
    def users_set_role(who: Who, name: str, body: RoleIn, request: Request) -> dict[str, Any]:
        return change(who, request, name, lambda s: accounts.set_role(s, name, body.role, who.name))

    @app.put(API + "/users/{name}/team", tags=["identity"], summary="Move a user to another team (it-admin)")
    def users_set_team(who: Who, name: str, body: TeamIn, request: Request) -> dict[str, Any]:
        return change(who, request, name, lambda s: accounts.set_team(s, name, body.team))

    @app.post(API + "/users/{name}/disable", tags=["identity"], summary="Refuse all of a user's tokens (it-admin)")
    def users_disable(who: Who, name: str, request: Request) -> dict[str, Any]:
        return change(who, request, name, lambda s: accounts.set_disabled(s, name, True, who.name))

    @app.post(API + "/users/{name}/enable", tags=["identity"], summary="Enable a disabled user again (it-admin)")
    def users_enable(who: Who, name: str, request: Request) -> dict[str, Any]:
        return change(who, request, name, lambda s: accounts.set_disabled(s, name, False, who.name))

    @app.get(API + "/audit", tags=["identity"], summary="The audit log, newest first (it-admin)")
    def audit(
        who: Who,
        since: Annotated[str | None, Query(max_length=32, description="24h, 7d, 2026-10-01 or an ISO time")] = None,
        user: Annotated[str | None, Query(max_length=64)] = None,
        action: Annotated[str | None, Query(max_length=64, description="a part of the action name")] = None,
        limit: Annotated[int, Query(ge=1, le=accounts.AUDIT_LIMIT)] = 100,
    ) -> list[dict[str, Any]]:
        need(who, "it-admin")
        start = accounts.parse_since(since, store.now()) if since else None
        with server.ledger.read() as session:
            return accounts.read_audit(session, start, user, action, limit)

    @app.get(API + "/pool/gpus", tags=["pool"], summary="Pool hosts with their free and leased GPUs (it-admin)")
    def pool_gpus(who: Who) -> dict[str, Any]:
        from deepops_infra.server.availability import pool_gpus

        need(who, "it-admin")
        with server.ledger.read() as session:
            return {"hosts": pool_gpus(server.settings, session)}

    from deepops_infra.server.availability import CloudReadiness

    ready = CloudReadiness(server.settings)

    @app.get(API + "/available", tags=["policy"], summary="What you can request now: targets, GPU models, counts")
    def available(who: Who) -> dict[str, Any]:
        from deepops_infra.server.availability import requestable

        need(who, "member", "team-admin", "it-admin")
        with server.ledger.read() as session:
            return requestable(server.settings, session, who.team, ready)
