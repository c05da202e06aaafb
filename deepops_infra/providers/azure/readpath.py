"""The Azure read path: what exists (every VM of the subscription with its power state, kept when
tagged as this installation's), GPU utilization from Azure Monitor, break-glass delete of the
machine's resource group (one per machine, so one delete removes everything it had).

GPU metrics: Telegraf's nvidia_smi input through its Azure Monitor output publishes the custom
metric `utilization_gpu` in namespace `telegraf/nvidia_smi`, one series per `index` dimension.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from deepops_infra import tags
from deepops_infra.errors import OperationError, UserError
from deepops_infra.providers.azure.clients import Clients
from deepops_infra.providers.base import Resource, Utilization

METRIC_NAMESPACE = "telegraf/nvidia_smi"
GPU_METRIC = "utilization_gpu"
MEMORY_METRIC = "utilization_memory"
WINDOW = timedelta(minutes=15)
GROUP_API = "2021-04-01"
DELETE_WAIT_S = 1800


def _power_state(vm: Any) -> str:
    view = vm.properties.instance_view if vm.properties else None
    for status in (view.statuses or []) if view else []:
        if status.code and status.code.startswith("PowerState/"):
            return status.code.split("/", 1)[1]
    return "unknown"


def _group(resource_id: str) -> str:
    parts = resource_id.split("/")
    lower = [p.lower() for p in parts]
    return parts[lower.index("resourcegroups") + 1]


def _ours(found: dict[str, str], installation_id: str) -> bool:
    return found.get(tags.MANAGED) == "true" and found.get(tags.INSTALLATION) == installation_id


def discover(clients: Clients, installation_id: str, regions: list[str] | None = None) -> list[Resource]:
    """VMs tagged as this installation's (list_all with statusOnly=true: power state included, every
    nextLink followed); a deallocated VM still exists (its disks bill) and is reported."""
    found = []
    for vm in clients.compute().virtual_machines.list_all(status_only="true"):
        labels = dict(vm.tags or {})
        if not _ours(labels, installation_id):
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


def delete(clients: Clients, vm_id: str, installation_id: str, timeout_s: float = DELETE_WAIT_S) -> None:
    """Break-glass: delete the VM's resource group, only if the VM carries this installation's tags.

    The group is deleted through the compute client's own pipeline (same endpoint, same credential)
    and polled on the Location ARM answers until it is gone."""
    import time

    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.core.rest import HttpRequest

    compute = clients.compute()
    group = _group(vm_id)
    name = vm_id.rstrip("/").rsplit("/", 1)[-1]
    try:
        vm = compute.virtual_machines.get(group, name)
    except ResourceNotFoundError:
        raise UserError(f"{vm_id} does not exist") from None
    if not _ours(dict(vm.tags or {}), installation_id):
        raise UserError(
            f"{name} is not managed by this deepops installation (tags {tags.MANAGED}, {tags.INSTALLATION}); "
            "refusing to delete its resource group"
        )
    sub = clients.az.require_subscription()
    url = f"/subscriptions/{sub}/resourcegroups/{group}?api-version={GROUP_API}"
    try:
        answer = compute.send_request(HttpRequest("DELETE", url))
        if answer.status_code not in (200, 202, 204, 404):
            answer.raise_for_status()
        location = answer.headers.get("Location")
        deadline = time.monotonic() + timeout_s
        while location and answer.status_code == 202:
            time.sleep(float(answer.headers.get("Retry-After", "5")))
            answer = compute.send_request(HttpRequest("GET", location))
            if time.monotonic() > deadline:
                raise OperationError(f"resource group {group} not deleted after {timeout_s:.0f}s")
        if answer.status_code >= 400 and answer.status_code != 404:
            answer.raise_for_status()
    except HttpResponseError as exc:
        raise OperationError(f"deleting resource group {group}: {exc.message}") from None
