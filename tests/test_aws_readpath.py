"""The AWS read path against a moto server: discovery by tag (paginated), CloudWatch GPU
utilization, break-glass terminate, AMI verification; every client through the endpoint override."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deepops_infra.providers.aws import readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.settings import AwsSettings

INSTALL = "inst-0123456789ab"
AMIS: dict[str, str] = {}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def clients(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # moto answers from a thread of this process: on a loaded machine an answer can take minutes
    yield Clients(AwsSettings(endpoint_url=moto_url, read_timeout=600))
    # moto's servers in one process share their state: leave nothing for the next test file.
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)


def launch(clients: Clients, region: str, tags: dict[str, str], count: int = 1) -> list[str]:
    ec2 = clients.ec2(region)
    if region not in AMIS:  # moto's image list is long: read it once per region
        AMIS[region] = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    ami = AMIS[region]
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    answer = ec2.run_instances(
        ImageId=ami, InstanceType="g5.xlarge", MinCount=count, MaxCount=count, TagSpecifications=spec
    )
    return [i["InstanceId"] for i in answer["Instances"]]


def ours(machine: str) -> dict[str, str]:
    return {"deepops-managed": "true", "deepops-machine": machine, "deepops-installation": INSTALL}


def test_the_endpoint_override_reaches_every_client(clients: Clients, moto_url: str) -> None:
    assert clients.ec2("us-east-1").meta.endpoint_url == moto_url
    assert clients.cloudwatch("eu-west-1").meta.endpoint_url == moto_url
    assert clients.pricing().meta.endpoint_url == moto_url
    per_service = Clients(AwsSettings(endpoint_url=moto_url, endpoints={"pricing": "https://pricing.example"}))
    assert per_service.pricing().meta.endpoint_url == "https://pricing.example"


def test_discover_finds_only_this_installations_machines_across_pages_and_regions(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    for region in ("us-east-1", "us-west-2"):
        clients.ec2(region).meta.events.register(
            "provide-client-params.ec2.DescribeInstances", lambda params, **_: calls.append(dict(params))
        )
    mine = [launch(clients, "us-east-1", ours(f"m-{n:08x}"))[0] for n in range(7)]
    mine += launch(clients, "us-west-2", ours("m-west0001"))
    launch(clients, "us-east-1", {"deepops-managed": "true", "deepops-installation": "inst-someoneelse"})
    launch(clients, "us-east-1", {"Name": "not-ours"})
    launch(clients, "us-east-1", {}, count=2)
    gone = launch(clients, "us-east-1", ours("m-gone0001"))[0]
    clients.ec2("us-east-1").terminate_instances(InstanceIds=[gone])
    monkeypatch.setattr(readpath, "PAGE_SIZE", 5)
    found = readpath.discover(clients, ["us-east-1", "us-west-2"], INSTALL)
    assert sorted(r.resource_id for r in found) == sorted(mine)
    west = next(r for r in found if r.machine_id == "m-west0001")
    assert west.location.startswith("us-west-2") and west.state == "running"
    assert all(r.tags["deepops-installation"] == INSTALL for r in found)
    # The filters went to the server, and the 7 east machines took two pages of 5.
    east_calls = [c for c in calls if c.get("MaxResults") == 5]
    assert len(east_calls) >= 3  # 2 pages in us-east-1, 1 in us-west-2
    assert {"Name": "tag:deepops-installation", "Values": [INSTALL]} in calls[0]["Filters"]


def test_utilization_reads_each_gpu_from_cloudwatch(clients: Clients) -> None:
    [instance] = launch(clients, "us-east-1", ours("m-util0001"))
    cw = clients.cloudwatch("us-east-1")
    now = datetime.now(UTC).replace(microsecond=0)
    for index, values in ((0, [90.0, 70.0]), (1, [0.0, 10.0])):
        dims = [
            {"Name": "InstanceId", "Value": instance},
            {"Name": "index", "Value": str(index)},
            {"Name": "name", "Value": "NVIDIA A10G"},
        ]
        cw.put_metric_data(
            Namespace="CWAgent",
            MetricData=[
                {
                    "MetricName": readpath.GPU_METRIC,
                    "Dimensions": dims,
                    "Value": v,
                    "Timestamp": now - timedelta(minutes=m),
                }
                for m, v in zip((5, 3), values, strict=True)
            ]
            + [
                {
                    "MetricName": readpath.MEMORY_METRIC,
                    "Dimensions": dims,
                    "Value": 40.0,
                    "Timestamp": now - timedelta(minutes=4),
                }
            ],
        )
    util = readpath.utilization(clients, "us-east-1", instance, now=now + timedelta(minutes=1))
    assert util.gpu_percent == [80.0, 5.0]  # mean of 90, 70 and of 0, 10
    assert util.gpu_memory_percent == [40.0, 40.0]
    assert util.active is True
    nothing = readpath.utilization(clients, "us-east-1", "i-00000000000000000", now=now)
    assert nothing.active is None and nothing.gpu_percent == []  # no signal: unknown, counts as active


def test_unreadable_utilization_fails_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dead = Clients(AwsSettings(endpoint_url="http://127.0.0.1:9"))
    util = readpath.utilization(dead, "us-east-1", "i-0123")
    assert util.active is None


def test_break_glass_terminate_only_touches_this_installations_instances(clients: Clients) -> None:
    from deepops_infra.errors import UserError

    [mine] = launch(clients, "us-east-1", ours("m-term0001"))
    [theirs] = launch(clients, "us-east-1", {"deepops-managed": "true", "deepops-installation": "inst-other"})
    [plain] = launch(clients, "us-east-1", {})
    for other in (theirs, plain):
        with pytest.raises(UserError, match="not managed by this deepops installation"):
            readpath.terminate(clients, "us-east-1", other, INSTALL)
    with pytest.raises(UserError, match="i-0000000000000dead"):
        readpath.terminate(clients, "us-east-1", "i-0000000000000dead", INSTALL)
    assert readpath.terminate(clients, "us-east-1", mine, INSTALL) in ("shutting-down", "terminated")
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in clients.ec2("us-east-1").describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states[theirs] == states[plain] == "running"
    assert states[mine] in ("shutting-down", "terminated")


def test_verify_pins_with_describe_images(clients: Clients) -> None:
    from deepops_infra.providers.aws.images import check_image, verify
    from deepops_infra.providers.cloudimages import Pins

    real = clients.ec2("us-east-1").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    pins = {
        "pytorch": Pins(
            "pytorch", "ubuntu", "/usr/bin/python3", {"us-east-1": real, "us-west-2": "ami-0deadbeefdeadbeef"}
        )
    }
    results = {r.region: r for r in verify(clients.ec2, pins)}
    assert results["us-east-1"].ok, results["us-east-1"].detail
    assert not results["us-west-2"].ok and "not found" in results["us-west-2"].detail
    now = datetime(2026, 1, 1, tzinfo=UTC)
    old = check_image("r", "i", "ami-1", {"State": "available", "DeprecationTime": "2025-12-01T00:00:00.000Z"}, now)
    later = check_image("r", "i", "ami-1", {"State": "available", "DeprecationTime": "2026-06-01T00:00:00.000Z"}, now)
    pending = check_image("r", "i", "ami-1", {"State": "pending"}, now)
    assert (old.ok, later.ok, pending.ok) == (False, True, False)
    assert "deprecated since 2025-12-01" in old.detail


def test_a_ghost_is_confirmed_only_by_ec2(clients: Clients) -> None:
    """The reaper closes a ledger row whose instance is gone only when EC2 says so."""
    [running, ended] = launch(clients, "us-east-1", ours("m-ghost001"), count=2)
    clients.ec2("us-east-1").terminate_instances(InstanceIds=[ended])
    assert readpath.gone_since(clients, "us-east-1", running) is None
    assert readpath.gone_since(clients, "us-east-1", ended) is not None
    assert readpath.gone_since(clients, "us-east-1", "i-0000000000000beef") is not None  # unknown to EC2
