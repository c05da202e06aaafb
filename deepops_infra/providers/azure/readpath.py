"""The Azure read path: what exists (every VM of the subscription with its power state, kept when
tagged as this installation's), whether a machine's VM is gone (a ghost's confirmation), GPU
utilization from Azure Monitor. Break-glass removal is in breakglass.py.

GPU metrics: Telegraf's nvidia_smi input through its Azure Monitor output publishes the custom
metric `utilization_gpu` in namespace `telegraf/nvidia_smi`, one series per `index` dimension.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from deepops_infra import tags
from deepops_infra.providers.azure import arm
from deepops_infra.providers.azure.clients import Clients
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.ownership import carries, gone_on_not_found

METRIC_NAMESPACE = "telegraf/nvidia_smi"
GPU_METRIC = "utilization_gpu"
MEMORY_METRIC = "utilization_memory"
WINDOW = timedelta(minutes=15)


def _power_state(vm: Any) -> str:
    view = vm.properties.instance_view if vm.properties else None
    for status in (view.statuses or []) if view else []:
        if status.code and status.code.startswith("PowerState/"):
            return status.code.split("/", 1)[1]
    return "unknown"


def discover(clients: Clients, installation_id: str, regions: list[str] | None = None) -> list[Resource]:
    """VMs tagged as this installation's (list_all with statusOnly=true: power state included, every
    nextLink followed); a deallocated VM still exists (its disks bill) and is reported."""
    found = []
    for vm in clients.compute().virtual_machines.list_all(status_only="true"):
        labels = dict(vm.tags or {})
        if not carries(labels, installation_id):
            continue
        if regions and vm.location not in regions:
            continue
        found.append(
            Resource(
                cloud="azure",
                machine_id=labels.get(tags.MACHINE),
                resource_id=vm.id,
                state=_power_state(vm),
                tags=labels,
                location=vm.location,
            )
        )
    return found


def utilization(clients: Clients, vm_id: str, now: datetime | None = None) -> Utilization:
    """Mean utilization per GPU over the last 15 minutes; unreadable or missing counts as unknown (active)."""
    now = now or datetime.now(UTC)
    unknown = Utilization(at=now, gpu_percent=[], gpu_memory_percent=[], active=None)
    span = f"{(now - WINDOW).strftime('%Y-%m-%dT%H:%M:%SZ')}/{now.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    try:
        answer = clients.monitor().metrics.list(
            vm_id,
            timespan=span,
            interval="PT1M",
            metricnames=f"{GPU_METRIC},{MEMORY_METRIC}",
            aggregation="Average",
            metricnamespace=METRIC_NAMESPACE,
            filter="index eq '*'",
        )
        values: dict[tuple[str, int], float] = {}
        for metric in answer.value:
            for n, series in enumerate(metric.timeseries or []):
                dims = {d.name.value: d.value for d in (series.metadatavalues or [])}
                points = [p.average for p in (series.data or []) if p.average is not None]
                if points:
                    values[(metric.name.value, int(dims.get("index", n)))] = sum(points) / len(points)
    except Exception:
        return unknown
    gpu = [values[k] for k in sorted(values) if k[0] == GPU_METRIC]
    mem = [values[k] for k in sorted(values) if k[0] == MEMORY_METRIC]
    if not gpu:
        return unknown
    return Utilization(at=now, gpu_percent=gpu, gpu_memory_percent=mem, active=any(v > 0 for v in gpu))


def _vm_not_found(exc: Exception) -> bool:
    """ARM's own word that the VM (or its whole resource group) does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    code = getattr(getattr(exc, "error", None), "code", None)
    return isinstance(exc, ResourceNotFoundError) and code in arm.NOT_FOUND_CODES


def gone_since(clients: Clients, vm_id: str, now: datetime | None = None) -> datetime | None:
    """When ARM confirms the machine's VM is gone (not found); None while it exists or ARM cannot tell."""
    return gone_on_not_found(
        lambda: clients.compute().virtual_machines.get(arm.group_of(vm_id), arm.name_of(vm_id)), _vm_not_found, now
    )
