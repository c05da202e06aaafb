"""The AWS read path with boto3: what exists (by tag), GPU utilization, and break-glass terminate.

Discovery asks EC2 for this installation's machines only (server-side tag filters, paginated);
utilization reads what deepops-agent publishes (namespace DeepOps unless `agent.sinks` names
another: Active, IdleSeconds, GPUUtilization, GPUMemoryUtilization by MachineId), else the NVIDIA
metrics of the CloudWatch agent (namespace CWAgent, one series per GPU index), for all machines
of a region in GetMetricData batches of up to 500 queries.
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from deepops_infra import tags
from deepops_infra.agent.settings import CLOUDWATCH_NAMESPACE
from deepops_infra.errors import OperationError, UserError
from deepops_infra.providers.aws import metricdata
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.base import Resource, Utilization

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# What deepops-agent publishes (deepops_agent.cloudwatch_sink): per machine, dimension MachineId.
AGENT_NAMESPACE = CLOUDWATCH_NAMESPACE
# (metric, statistic): the most active and the least idle reading of each minute (fail safe).
AGENT_METRICS = (
    ("Active", "Maximum"),
    ("IdleSeconds", "Minimum"),
    ("GPUUtilization", "Average"),
    ("GPUMemoryUtilization", "Average"),
)
# The CloudWatch agent's NVIDIA metrics: the fallback for machines whose agent published nothing.
METRIC_NAMESPACE = "CWAgent"
GPU_METRIC = "nvidia_smi_utilization_gpu"
MEMORY_METRIC = "nvidia_smi_utilization_memory"
WINDOW = timedelta(minutes=15)
STALE = timedelta(minutes=5)  # an agent silent for longer is unknown (it publishes every minute)
PERIOD_S = 60
MAX_QUERIES = 500  # GetMetricData's limit per call
PAGE_SIZE = 100


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def discover(clients: Clients, regions: Iterable[str], installation_id: str) -> list[Resource]:
    """Every live instance tagged as this installation's, in the given regions."""
    found = []
    filters = [
        {"Name": f"tag:{tags.MANAGED}", "Values": ["true"]},
        {"Name": f"tag:{tags.INSTALLATION}", "Values": [installation_id]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ]
    for region in regions:
        paginator = clients.ec2(region).get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    tagged = _tags(inst)
                    found.append(
                        Resource(
                            cloud="aws",
                            machine_id=tagged.get(tags.MACHINE),
                            resource_id=inst["InstanceId"],
                            state=inst["State"]["Name"],
                            tags=tagged,
                            location=inst.get("Placement", {}).get("AvailabilityZone") or region,
                        )
                    )
    return found


def _metric(namespace: str, name: str, dimensions: list[dict[str, str]], stat: str) -> dict[str, Any]:
    return {
        "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dimensions},
            "Period": PERIOD_S,
            "Stat": stat,
        },
        "ReturnData": True,
    }


def _metric_data(cw: Any, queries: list[dict[str, Any]], start: datetime, end: datetime) -> list[list[tuple]]:
    """GetMetricData for any number of queries, MAX_QUERIES per call (and its NextToken pages):
    the (timestamp, value) points of each query, in the order given."""
    points: list[list[tuple]] = [[] for _ in queries]
    for first in range(0, len(queries), MAX_QUERIES):
        chunk = [{**q, "Id": f"q{first + n}"} for n, q in enumerate(queries[first : first + MAX_QUERIES])]
        token: str | None = None
        while True:
            args: dict[str, Any] = {"StartTime": start, "EndTime": end}
            if token:
                args["NextToken"] = token
            answer = metricdata.get_metric_data(cw, chunk, **args)
            for result in answer.get("MetricDataResults", []):
                index = int(result["Id"][1:])
                points[index] += zip(result.get("Timestamps") or [], result.get("Values") or [], strict=False)
            token = answer.get("NextToken")
            if not token:
                break
    return points


def _mean(points: list[tuple]) -> float:
    return sum(v for _, v in points) / len(points)


def _agent_readings(cw: Any, machine_ids: list[str], namespace: str, now: datetime) -> dict[str, Utilization]:
    """What each machine's agent published (Active, IdleSeconds, GPU metrics with dimension
    MachineId); machines without any Active point are left out (the caller falls back)."""
    queries = []
    for mid in machine_ids:
        dims = [{"Name": "MachineId", "Value": mid}]
        queries += [_metric(namespace, name, dims, stat) for name, stat in AGENT_METRICS]
    points = _metric_data(cw, queries, now - WINDOW, now)
    found = {}
    for n, mid in enumerate(machine_ids):
        active, idle, gpu, mem = points[n * len(AGENT_METRICS) : (n + 1) * len(AGENT_METRICS)]
        if not active:
            continue
        start, latest = max(active, key=lambda p: p[0])
        # CloudWatch stamps a period's start; the point lies inside it. Its end keeps the idle
        # time on the short side (fail safe), and `start` finds the IdleSeconds of the same period.
        at = min(start.astimezone(UTC) + timedelta(seconds=PERIOD_S), now)
        # The agent publishes the busiest GPU of each sample: one series per machine.
        gpus = {"gpu_percent": [_mean(gpu)] if gpu else [], "gpu_memory_percent": [_mean(mem)] if mem else []}
        if now - at > STALE:
            detail = f"agent metrics are stale (last at {at:%H:%M:%S}Z)"
            found[mid] = Utilization(at=now, active=None, source="agent", signals={"error": detail}, **gpus)
            continue
        idle_at = [v for t, v in idle if t == start] or [v for _, v in idle]
        idle_seconds = min(idle_at) if idle_at else 0.0
        found[mid] = Utilization(
            at=at,
            active=latest >= 0.5,
            last_active_at=at - timedelta(seconds=idle_seconds),
            source="agent",
            **gpus,
        )
    return found


def _cwagent_readings(cw: Any, instances: dict[str, str], now: datetime) -> dict[str, Utilization]:
    """The CloudWatch agent's NVIDIA metrics of the given instances (machine ID -> instance ID):
    their series found with one paginated ListMetrics per metric for the region, not per machine."""
    wanted = {iid: mid for mid, iid in instances.items()}
    queries, keys, listed = [], [], set()
    for name in (GPU_METRIC, MEMORY_METRIC):
        paginator = cw.get_paginator("list_metrics")
        for page in paginator.paginate(Namespace=METRIC_NAMESPACE, MetricName=name, RecentlyActive="PT3H"):
            for metric in page.get("Metrics", []):
                dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                mid = wanted.get(dims.get("InstanceId", ""))
                series = (name, tuple(sorted(dims.items())))
                if mid is None or series in listed:
                    continue
                listed.add(series)
                keys.append((mid, name, int(dims.get("index", len(keys)))))
                queries.append(_metric(METRIC_NAMESPACE, name, metric["Dimensions"], "Average"))
    if not queries:
        return {}
    values: dict[str, dict[tuple[str, int], float]] = {}
    for key, points in zip(keys, _metric_data(cw, queries, now - WINDOW, now), strict=True):
        if points:
            values.setdefault(key[0], {})[key[1:]] = _mean(points)
    found = {}
    for mid, series in values.items():
        gpu = [series[k] for k in sorted(series) if k[0] == GPU_METRIC]
        mem = [series[k] for k in sorted(series) if k[0] == MEMORY_METRIC]
        found[mid] = Utilization(
            at=now, gpu_percent=gpu, gpu_memory_percent=mem, active=None if not gpu else any(v > 0 for v in gpu)
        )
    return found


def utilization_many(
    clients: Clients,
    region: str,
    instances: dict[str, str],
    now: datetime | None = None,
    namespace: str = AGENT_NAMESPACE,
) -> dict[str, Utilization]:
    """Utilization of many machines of one region (machine ID -> instance ID): the agent's own
    metrics first, the CloudWatch agent's NVIDIA metrics for machines whose agent published
    nothing; GetMetricData in batches of MAX_QUERIES, never a call per machine. Missing or
    unreadable is unknown, which counts as active."""
    now = now or datetime.now(UTC)
    cw = clients.cloudwatch(region)
    try:
        found = _agent_readings(cw, list(instances), namespace, now)
        missing = {mid: iid for mid, iid in instances.items() if mid not in found}
        if missing:
            found |= _cwagent_readings(cw, missing, now)
    except Exception as exc:
        error = f"CloudWatch in {region}: {type(exc).__name__}: {exc}"
        return {mid: Utilization.unknown(now, error) for mid in instances}
    return {mid: found.get(mid) or Utilization.unknown(now) for mid in instances}


def utilization(
    clients: Clients,
    region: str,
    instance_id: str,
    now: datetime | None = None,
    machine_id: str | None = None,
    namespace: str = AGENT_NAMESPACE,
) -> Utilization:
    """One machine's utilization (see utilization_many)."""
    key = machine_id or instance_id
    return utilization_many(clients, region, {key: instance_id}, now, namespace)[key]


def gone_since(clients: Clients, region: str, instance_id: str, now: datetime | None = None) -> datetime | None:
    """When EC2 confirms the instance is gone: terminated (or no longer known at all); else None.

    EC2 keeps a terminated instance visible for about an hour; after that the ID is unknown,
    which is as much a confirmation as the terminated state."""
    from botocore.exceptions import ClientError

    now = now or datetime.now(UTC)
    try:
        reservations = clients.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            return now
        return None  # cannot tell: never close a record on a guess
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        return now
    return now if instances[0]["State"]["Name"] == "terminated" else None


def terminate(clients: Clients, region: str, instance_id: str, installation_id: str) -> str:
    """Break-glass: terminate one instance by ID, only if it carries this installation's deepops tags.

    Returns the state EC2 reports after the call.
    """
    from botocore.exceptions import ClientError

    ec2 = clients.ec2(region)
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as exc:
        raise UserError(f"{instance_id} in {region}: {exc.response['Error']['Message']}") from None
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        raise UserError(f"{instance_id} does not exist in {region}")
    tagged = _tags(instances[0])
    if tagged.get(tags.MANAGED) != "true" or tagged.get(tags.INSTALLATION) != installation_id:
        raise UserError(
            f"{instance_id} is not managed by this deepops installation (tags {tags.MANAGED}, "
            f"{tags.INSTALLATION}); refusing to terminate it"
        )
    try:
        changes = ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
    except ClientError as exc:
        raise OperationError(f"terminating {instance_id}: {exc.response['Error']['Message']}") from None
    return changes[0]["CurrentState"]["Name"]
