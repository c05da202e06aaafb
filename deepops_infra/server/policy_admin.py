"""Policy administration through the API (it-admin): team policies kept in policy.yaml.

    GET    /api/v1/policy/teams          every team's effective policy and where it is defined
    PUT    /api/v1/policy/teams/{team}   set a team's rules (replaces its entry in policy.yaml)
    DELETE /api/v1/policy/teams/{team}   drop the entry: the team falls back to policy.default

Teams defined in config.yaml are refused (409): IT edits that file by hand. The rules are checked
by the same parser as the files (deepops_infra/policy_file.py); a refused request writes nothing.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from deepops_infra.server.problems import Problem

Duration = Annotated[str, Field(min_length=1, max_length=16, description="e.g. 30m, 8h, 2d, 1w")]
Name = Annotated[str, Field(min_length=1, max_length=32)]


class PolicyIn(BaseModel):
    """A team's rules, named as in config.yaml's `policy.teams.<team>`; rules left out inherit
    `policy.default`."""

    model_config = ConfigDict(extra="forbid")
    targets: list[Name] | None = Field(None, max_length=8, description="onprem, aws, gcp, azure")
    gpu_models: list[Name] | None = Field(None, max_length=64, description='GPU models, or ["*"] for any')
    max_gpus_running: int | None = Field(None, strict=True, description="GPUs the team holds at once")
    max_ttl: Duration | None = None
    default_ttl: Duration | None = None
    default_idle_timeout: Duration | None = None
    max_idle_timeout: Duration | None = None


def register_policy_admin(app: FastAPI, server: Any, Who: Any, need: Callable[..., None]) -> None:
    """Add the routes to the app; `Who` is its authenticated caller (an Annotated type with its
    dependency, used in the signatures below) and `need(caller, *roles)` its role check."""

    @app.get("/api/v1/policy/teams", tags=["policy"], summary="Every team's policy and where it is defined (it-admin)")
    def policy_teams(who: Who) -> dict[str, Any]:
        from deepops_infra.policy_file import listing

        need(who, "it-admin")
        return listing(server.settings)

    @app.put("/api/v1/policy/teams/{team}", tags=["policy"], summary="Set a team's policy in policy.yaml (it-admin)")
    def policy_set(who: Who, team: str, body: PolicyIn, request: Request) -> dict[str, Any]:
        from deepops_infra.policy_file import DefinedInConfig, set_team

        need(who, "it-admin")
        request.state.target = team[:128]
        try:
            return set_team(server.settings, team, body.model_dump(exclude_none=True))
        except DefinedInConfig as exc:
            raise Problem(409, str(exc)) from None

    @app.delete(
        "/api/v1/policy/teams/{team}", tags=["policy"], summary="Drop a team's policy from policy.yaml (it-admin)"
    )
    def policy_rm(who: Who, team: str, request: Request) -> dict[str, Any]:
        from deepops_infra.policy_file import DefinedInConfig, remove_team, rules_json

        need(who, "it-admin")
        request.state.target = team[:128]
        try:
            remove_team(server.settings, team)
        except DefinedInConfig as exc:
            raise Problem(409, str(exc)) from None
        return {"removed": team, "policy": rules_json(server.settings.config.policy_for(team))}
