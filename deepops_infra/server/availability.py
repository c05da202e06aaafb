"""What can be had now: the pool's GPUs (free and leased, per host) for the it-admin's pool page,
and for the request form the GPU models and counts a team can get on each allowed target (free
pool GPUs on one host; cloud shapes of the catalog where the cloud's credentials and the Pulumi
CLI are present), within the team's policy and the GPUs it already runs."""

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepops_infra.config import Settings

READY_CACHE_SECONDS = 60.0  # how long a cloud's readiness check (credentials, engine) is reused


def pool_gpus(settings: Settings, session: Session) -> list[dict[str, Any]]:
    """Every pool host with its GPUs (declared, or the last detection), which are leased, and how
    many of each model are free."""
    from deepops_infra.ledger.schema import GpuLease, HostInventory
    from deepops_infra.pool import load_pool
    from deepops_infra.providers.onprem.inventory import _offered, declared_capacity

    held: dict[str, set[int]] = {}
    for host, index in session.execute(select(GpuLease.host, GpuLease.gpu_index).where(GpuLease.released_at.is_(None))):
        held.setdefault(host, set()).add(index)
    out = []
    for host in load_pool(settings.pool_path).hosts:
        if host.declared_gpus is not None:
            gpus, source = declared_capacity(host).gpus, "declared"
        else:
            cached = session.get(HostInventory, host.name)
            gpus = _offered(host, cached.gpus) if cached else ()
            source = f"detected {cached.detected_at:%Y-%m-%d %H:%M}Z" if cached else "not detected yet"
        leased = held.get(host.name, set())
        free: dict[str, int] = {}
        for g in gpus:
            if g.index not in leased:
                free[g.model or g.name] = free.get(g.model or g.name, 0) + 1
        out.append(
            {
                "name": host.name,
                "connection": host.connection,
                "address": host.address if host.connection == "ssh" else None,
                "gpus": [
                    {"index": g.index, "name": g.name, "model": g.model, "leased": g.index in leased} for g in gpus
                ],
                "total": len(gpus),
                "free": sum(free.values()),
                "free_by_model": free,
                "source": source,
            }
        )
    return out


class CloudReadiness:
    """Whether a cloud can launch now (its credentials are found and the Pulumi CLI is there),
    checked without a network call and kept READY_CACHE_SECONDS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._seen: dict[str, tuple[float, bool, str]] = {}

    def __call__(self, cloud: str) -> tuple[bool, str]:
        hit = self._seen.get(cloud)
        if hit is not None and time.monotonic() - hit[0] < READY_CACHE_SECONDS:
            return hit[1], hit[2]
        ok, why = self._check(cloud)
        self._seen[cloud] = (time.monotonic(), ok, why)
        return ok, why

    def _check(self, cloud: str) -> tuple[bool, str]:
        from deepops_infra.engine.pulumi_backend import pulumi_cli
        from deepops_infra.errors import DeepopsError
        from deepops_infra.providers import get_provider

        if pulumi_cli() is None:
            return False, "the Pulumi CLI is not installed on the server"
        try:
            ok, detail = get_provider(cloud, self.settings, None).has_credentials()  # type: ignore[arg-type]
        except DeepopsError as exc:
            return False, str(exc).splitlines()[0]
        except Exception as exc:  # a broken SDK or configuration: not offered, and the form says why
            return False, f"cannot check its credentials ({type(exc).__name__})"
        return ok, "" if ok else detail


def _allowed(models: tuple[str, ...], model: str) -> bool:
    from deepops_infra.accelerators import model_allows

    return "*" in models or any(model_allows(a, model) for a in models)


def requestable(
    settings: Settings, session: Session, team: str, cloud_ready: Callable[[str], tuple[bool, str]]
) -> dict[str, Any]:
    """What the team's request form offers: per allowed target, whether it can launch now and
    the GPU counts of each model to be had there (within the team's remaining GPUs; the model ""
    is a pool GPU of no known model, asked for by count), and the TTLs."""
    from deepops_infra.ledger import store

    policy = settings.config.policy_for(team)
    running = store.running_gpus(session, team)
    room = max(0, policy.max_gpus_running - running)
    targets = []
    for target in policy.targets:
        if target == "onprem":
            most: dict[str, int] = {}  # a machine's GPUs are on one host
            for host in pool_gpus(settings, session):
                free: dict[str, int] = {}
                for g in host["gpus"]:
                    model = g["model"] or ""  # "": a GPU of no known model, asked for by count only
                    allowed = _allowed(policy.gpu_models, model) if model else "*" in policy.gpu_models
                    if not g["leased"] and allowed:
                        free[model] = free.get(model, 0) + 1
                for model, n in free.items():
                    most[model] = max(most.get(model, 0), min(n, room))
            models = {m: list(range(1, n + 1)) for m, n in most.items()}
            targets.append({"target": target, "ready": True, "why": "", "models": _sorted(models)})
            continue
        ok, why = cloud_ready(target)
        models = _cloud_models(settings, target, policy, room) if ok else {}
        targets.append({"target": target, "ready": ok, "why": why, "models": models})
    return {
        "team": team,
        "running_gpus": running,
        "max_gpus": room,
        "max_ttl_seconds": int(policy.max_ttl.total_seconds()),
        "default_ttl_seconds": int(policy.default_ttl.total_seconds()),
        "targets": targets,
    }


def _cloud_models(settings: Settings, cloud: str, policy: Any, room: int) -> dict[str, list[int]]:
    """The GPU counts of each allowed model's on-demand shapes in the catalog, up to `room` GPUs."""
    from deepops_infra.catalog import load_catalog

    models: dict[str, set[int]] = {}
    for o in load_catalog(settings.home):
        on_demand = o.cloud == cloud and o.price_per_hour is not None
        if on_demand and 0 < o.accelerator_count <= room and _allowed(policy.gpu_models, o.accelerator):
            models.setdefault(o.accelerator, set()).add(o.accelerator_count)
    return _sorted({m: sorted(n) for m, n in models.items()})


def _sorted(models: dict[str, list[int]]) -> dict[str, list[int]]:
    return {m: n for m, n in sorted(models.items()) if n}
