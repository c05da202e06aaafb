"""The GCP read path: what exists (aggregated list filtered by label, every page), whether a machine's
instance is gone (a ghost's confirmation), GPU utilization (Cloud Monitoring, the Ops Agent's
`agent.googleapis.com/gpu/utilization` per GPU), break-glass delete.

Labels are the DESIGN tags in GCP's label charset (tags.gcp_labels).
"""

from datetime import UTC, datetime, timedelta

from deepops_infra import tags
from deepops_infra.errors import OperationError, UserError
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.gcp.clients import Clients
from deepops_infra.providers.ownership import carries, gone_on_not_found

# Every status GCE answers names an instance that exists. TERMINATED is a *stopped* instance (its
# disks still bill and it can be started again; host maintenance leaves GPU machines there with
# onHostMaintenance TERMINATE), never a deleted one: a deleted instance is simply not found. So it
# is reported as "stopped", a state the reaper never takes for gone (guards.GONE_STATES).
STATES = {"TERMINATED": "stopped", "STOPPED": "stopped", "SUSPENDED": "suspended", "": "unknown"}
GPU_METRIC = "agent.googleapis.com/gpu/utilization"
WINDOW = timedelta(minutes=15)
PAGE_SIZE = 500
MONITORING = "https://monitoring.googleapis.com"
OPERATION_WAIT_S = 600

MANAGED = tags.gcp_label_value(tags.MANAGED)
INSTALLATION = tags.gcp_label_value(tags.INSTALLATION)
MACHINE = tags.gcp_label_value(tags.MACHINE)


def label_filter(installation_id: str) -> str:
    return f'(labels.{MANAGED} = "true") AND (labels.{INSTALLATION} = "{tags.gcp_label_value(installation_id)}")'


def _ours(labels: dict[str, str], installation_id: str) -> bool:
    return carries(labels, installation_id, form=tags.gcp_label_value)


def state_of(status: str) -> str:
    """The reported state of a GCE instance status (lower case; TERMINATED is "stopped")."""
    return STATES.get(status, status.lower())


def _zone(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def discover(clients: Clients, project: str, installation_id: str, regions: list[str] | None = None) -> list[Resource]:
    """Every instance labelled as this installation's, in every zone (a zone's warning is no error),
    whatever its status: a stopped or suspended one still exists and bills for its disks.

    The label filter goes to the server; what comes back is checked again, so an instance that is
    not ours is never reported whatever the server answers."""
    from google.cloud import compute_v1

    request = compute_v1.AggregatedListInstancesRequest(
        project=project, filter=label_filter(installation_id), max_results=PAGE_SIZE
    )
    found = []
    for _scope, scoped in clients.instances().aggregated_list(request=request):
        for inst in scoped.instances:
            labels = dict(inst.labels)
            zone = _zone(inst.zone)
            if not _ours(labels, installation_id):
                continue
            if regions and zone.rsplit("-", 1)[0] not in regions:
                continue
            found.append(
                Resource(
                    cloud="gcp",
                    machine_id=labels.get(MACHINE),
                    resource_id=inst.name,
                    state=state_of(inst.status),
                    tags=labels,
                    location=zone,
                )
            )
    return sorted(found, key=lambda r: (r.location or "", r.resource_id))


def utilization(clients: Clients, project: str, instance_id: str, now: datetime | None = None) -> Utilization:
    """Mean utilization per GPU over the last 15 minutes; unreadable or missing counts as unknown (active)."""
    now = now or datetime.now(UTC)
    unknown = Utilization(at=now, gpu_percent=[], gpu_memory_percent=[], active=None)
    params = {
        "filter": f'metric.type = "{GPU_METRIC}" AND resource.labels.instance_id = "{instance_id}"',
        "interval.startTime": (now - WINDOW).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interval.endTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "view": "FULL",
    }
    per_gpu: dict[int, list[float]] = {}
    try:
        while True:
            page = clients.get_json("monitoring", MONITORING, f"/v3/projects/{project}/timeSeries", params)
            for ts in page.get("timeSeries", []):
                index = int(ts.get("metric", {}).get("labels", {}).get("gpu_number", len(per_gpu)))
                for point in ts.get("points", []):
                    value = point.get("value", {})
                    per_gpu.setdefault(index, []).append(float(value.get("doubleValue", value.get("int64Value", 0))))
            if not page.get("nextPageToken"):
                break
            params["pageToken"] = page["nextPageToken"]
    except Exception:
        return unknown
    gpu = [sum(v) / len(v) for _, v in sorted(per_gpu.items()) if v]
    if not gpu:
        return unknown
    return Utilization(at=now, gpu_percent=gpu, gpu_memory_percent=[], active=any(v > 0 for v in gpu))


def _instance_not_found(exc: Exception) -> bool:
    """Compute Engine's own word that the instance does not exist: a 404 whose error says notFound."""
    from google.api_core.exceptions import NotFound

    return isinstance(exc, NotFound) and any(
        isinstance(e, dict) and e.get("reason") == "notFound" for e in (exc.errors or [])
    )


def gone_since(clients: Clients, project: str, zone: str, name: str, now: datetime | None = None) -> datetime | None:
    """When Compute Engine confirms the instance is gone (not found); None while it exists, in any
    status (a stopped one is not gone), or when the API cannot tell."""
    return gone_on_not_found(
        lambda: clients.instances().get(project=project, zone=zone, instance=name), _instance_not_found, now
    )


def wait_operation(clients: Clients, project: str, zone: str, name: str, timeout_s: float = OPERATION_WAIT_S) -> None:
    """Poll a zone operation (zoneOperations.wait answers when done or after ~2 minutes) until DONE."""
    import time

    from google.cloud import compute_v1

    deadline = time.monotonic() + timeout_s
    while True:
        op = clients.zone_operations().wait(project=project, zone=zone, operation=name)
        if op.status == compute_v1.Operation.Status.DONE:
            if op.error and op.error.errors:
                raise OperationError(f"{name}: " + "; ".join(e.message for e in op.error.errors))
            return
        if time.monotonic() > deadline:
            raise OperationError(f"operation {name} in {zone} not done after {timeout_s:.0f}s")


def delete(clients: Clients, project: str, zone: str, name: str, installation_id: str) -> None:
    """Break-glass: delete one instance, only if it carries this installation's deepops labels."""
    from google.api_core.exceptions import GoogleAPICallError, NotFound

    instances = clients.instances()
    try:
        inst = instances.get(project=project, zone=zone, instance=name)
    except NotFound:
        raise UserError(f"{name} does not exist in {zone}") from None
    if not _ours(dict(inst.labels), installation_id):
        raise UserError(
            f"{name} is not managed by this deepops installation (labels {MANAGED}, {INSTALLATION}); "
            "refusing to delete it"
        )
    try:
        op = instances.delete_unary(project=project, zone=zone, instance=name)
        wait_operation(clients, project, zone, op.name)
    except NotFound:
        return  # gone already
    except GoogleAPICallError as exc:
        raise OperationError(f"deleting {name} in {zone}: {exc.message}") from None
