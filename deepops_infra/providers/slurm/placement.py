"""`--cloud onprem` over a pool with clusters: the hosts' offers and the clusters' offers, merged.

The on-prem provider plans its hosts itself and hands the pool's clusters to the provider of their
kind (Slurm today; a Kubernetes cluster's provider would plug in here the same way). Each plan
names its own cloud (`onprem` or `slurm`), so once a machine is recorded every call goes to the
provider of the target it landed on. Order: price first, then availability (more free GPUs).
"""

from typing import TYPE_CHECKING, Any

from deepops_infra.errors import CapacityError, UserError
from deepops_infra.providers.base import Plan

if TYPE_CHECKING:
    from deepops_infra.images import Image
    from deepops_infra.request import MachineRequest


def cluster_provider(onprem: Any) -> Any:
    """The provider of the pool's clusters, sharing the on-prem provider's pool and ledger."""
    from deepops_infra.providers.slurm.provider import SlurmProvider

    slurm = SlurmProvider(onprem.settings, onprem.ledger)
    slurm._pool = onprem.pool
    return slurm


def free_gpus(plan: Plan) -> int:
    if "free_gpus" in plan.details:
        return int(plan.details["free_gpus"])
    return len(plan.details.get("candidate_gpus") or [])


def combined(onprem: Any, host_plans: Any, request: "MachineRequest", image: "Image") -> list[Plan]:
    """Plans over the pool's hosts (`host_plans(request, image)`) and its clusters."""
    pool = onprem.pool
    clusters = cluster_provider(onprem)
    if request.host:
        return clusters.plan(request, image) if pool.cluster(request.host) else host_plans(request, image)
    plans: list[Plan] = []
    refused: list[UserError] = []
    for planner in (host_plans, clusters.plan):
        try:
            plans += planner(request, image)
        except UserError as exc:
            refused.append(exc)
    if not plans:
        if all(isinstance(e, CapacityError) for e in refused):
            raise CapacityError(" | ".join(str(e) for e in refused))
        raise UserError(" | ".join(str(e) for e in refused))
    return sorted(plans, key=lambda p: (p.price.per_hour, -free_gpus(p), p.cloud, p.host or "", p.region or ""))
