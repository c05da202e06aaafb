"""The AWS read path with boto3: what exists (by tag), GPU utilization, and break-glass terminate.

Discovery asks EC2 for this installation's machines only (server-side tag filters, paginated);
utilization reads the NVIDIA metrics the CloudWatch agent publishes (namespace CWAgent,
`nvidia_smi_utilization_gpu` / `nvidia_smi_utilization_memory`, one series per GPU index).
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from deepops_infra import tags
from deepops_infra.errors import OperationError, UserError
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.base import Resource, Utilization

LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
METRIC_NAMESPACE = "CWAgent"
GPU_METRIC = "nvidia_smi_utilization_gpu"
MEMORY_METRIC = "nvidia_smi_utilization_memory"
WINDOW = timedelta(minutes=15)
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


def _series(cw: Any, metric: str, instance_id: str) -> list[dict[str, Any]]:
    """The metric's dimension sets for this instance (one per GPU)."""
    out = []
    paginator = cw.get_paginator("list_metrics")
    for page in paginator.paginate(
        Namespace=METRIC_NAMESPACE, MetricName=metric, Dimensions=[{"Name": "InstanceId", "Value": instance_id}]
    ):
        out += page.get("Metrics", [])
    return out


def utilization(clients: Clients, region: str, instance_id: str, now: datetime | None = None) -> Utilization:
    """Mean utilization per GPU over the last 15 minutes; unreadable or missing counts as unknown (active)."""
    now = now or datetime.now(UTC)
    cw = clients.cloudwatch(region)
    try:
        metrics = {name: _series(cw, name, instance_id) for name in (GPU_METRIC, MEMORY_METRIC)}
        queries, keys = [], []
        for name, series in metrics.items():
            for n, metric in enumerate(series):
                dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                keys.append((name, int(dims.get("index", n))))
                queries.append(
                    {
                        "Id": f"q{len(queries)}",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": METRIC_NAMESPACE,
                                "MetricName": name,
                                "Dimensions": metric["Dimensions"],
                            },
                            "Period": 60,
                            "Stat": "Average",
                        },
                        "ReturnData": True,
                    }
                )
        if not queries:
            return Utilization(at=now, gpu_percent=[], gpu_memory_percent=[], active=None)
        answer = cw.get_metric_data(MetricDataQueries=queries, StartTime=now - WINDOW, EndTime=now)
    except Exception:
        return Utilization(at=now, gpu_percent=[], gpu_memory_percent=[], active=None)
    values: dict[tuple[str, int], float] = {}
    for result in answer.get("MetricDataResults", []):
        points = result.get("Values") or []
        if points:
            values[keys[int(result["Id"][1:])]] = sum(points) / len(points)
    gpu = [values[k] for k in sorted(values) if k[0] == GPU_METRIC]
    mem = [values[k] for k in sorted(values) if k[0] == MEMORY_METRIC]
    active = None if not gpu else any(v > 0 for v in gpu)
    return Utilization(at=now, gpu_percent=gpu, gpu_memory_percent=mem, active=active)


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
