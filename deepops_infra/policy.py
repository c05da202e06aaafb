"""IT's rules for what a team may request; `up` checks them before writing anything."""

from datetime import timedelta

from deepops_infra.accelerators import model_allows
from deepops_infra.config import TeamPolicy
from deepops_infra.durations import format_duration
from deepops_infra.errors import PolicyError
from deepops_infra.request import MachineRequest


def check_static(request: MachineRequest, policy: TeamPolicy, cloud: str) -> None:
    """Rules that depend only on the request (target, model, TTL, idle timeout)."""
    team = request.team
    if cloud not in policy.targets:
        raise PolicyError(
            f"policy (team {team}, rule targets): {cloud} is not allowed; allowed: {', '.join(policy.targets)}"
        )
    if request.gpus.count and "*" not in policy.gpu_models:
        model = request.gpus.model
        if model is None or not any(model_allows(allowed, model) for allowed in policy.gpu_models):
            raise PolicyError(
                f"policy (team {team}, rule gpu_models): {model or 'an unspecified model'} is not "
                f"allowed; allowed: {', '.join(policy.gpu_models)}"
            )
    if request.gpus.count > policy.max_gpus_running:
        raise PolicyError(
            f"policy (team {team}, rule max_gpus_running): {request.gpus.count} GPUs asked, "
            f"the team may run at most {policy.max_gpus_running}"
        )
    check_ttl(request.ttl, policy, team)
    if request.idle_timeout > policy.max_idle_timeout:
        raise PolicyError(
            f"policy (team {team}, rule max_idle_timeout): --idle-timeout "
            f"{format_duration(request.idle_timeout)} is above the maximum "
            f"{format_duration(policy.max_idle_timeout)}"
        )


def check_ttl(ttl: timedelta, policy: TeamPolicy, team: str, what: str = "--ttl") -> None:
    if ttl > policy.max_ttl:
        raise PolicyError(
            f"policy (team {team}, rule max_ttl): {what} {format_duration(ttl)} is above the "
            f"maximum {format_duration(policy.max_ttl)}"
        )


def check_running(request: MachineRequest, policy: TeamPolicy, running: int) -> None:
    """The team's GPUs at once, counted inside the transaction that records the machine."""
    if request.gpus.count and running + request.gpus.count > policy.max_gpus_running:
        raise PolicyError(
            f"policy (team {request.team}, rule max_gpus_running): the team runs {running} GPUs, "
            f"{request.gpus.count} more would pass the limit of {policy.max_gpus_running}"
        )
