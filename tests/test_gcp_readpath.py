"""The GCP read path with the official clients (REST transport) against a local server answering
recorded Compute Engine and Cloud Monitoring JSON, through the configured endpoint overrides."""

import copy
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

pytest.importorskip("google.cloud.compute_v1")

from deepops_infra.errors import UserError
from deepops_infra.providers.gcp import images, readpath
from deepops_infra.providers.gcp.clients import Clients
from deepops_infra.providers.gcp.settings import GcpSettings
from tests.fake_api import Api, Seen, fixture, serve

INSTALL = "i-1234abcd"
AGG = "/compute/v1/projects/gpu-lab/aggregated/instances"


@pytest.fixture
def api() -> Iterator[Api]:
    with serve() as api:
        yield api


@pytest.fixture
def clients(api: Api) -> Clients:
    from google.auth.credentials import AnonymousCredentials

    gcp = GcpSettings(project="gpu-lab", endpoints={"compute": api.url, "monitoring": api.url})
    return Clients(gcp, credentials=AnonymousCredentials())


def aggregated(seen: Seen) -> tuple[int, object, dict[str, str]] | None:
    if seen.method != "GET" or seen.path != AGG:
        return None
    token = seen.query.get("pageToken", [""])[0]
    page1 = fixture("gcp", "aggregated_instances_page1.json")
    if not token:
        return 200, page1, {}
    assert token == page1["nextPageToken"]
    return 200, fixture("gcp", "aggregated_instances_page2.json"), {}


def test_discover_follows_pages_skips_warning_zones_and_foreign_instances(api: Api, clients: Clients) -> None:
    api.on(aggregated)
    found = readpath.discover(clients, "gpu-lab", INSTALL)
    assert [(r.machine_id, r.resource_id, r.state, r.location) for r in found] == [
        # Status TERMINATED is a stopped instance (host maintenance of a GPU machine leaves it there):
        # it still exists and its disk bills, as a suspended one's does.
        ("m-33334444", "deepops-m-33334444", "stopped", "europe-west4-a"),
        ("m-55556666", "deepops-m-55556666", "suspended", "europe-west4-a"),
        ("m-0a1b2c3d", "deepops-m-0a1b2c3d", "running", "us-central1-a"),
        ("m-11112222", "deepops-m-11112222", "running", "us-east4-c"),
    ]
    # Not reported: the unlabelled jupyter-ada, another installation's machine.
    calls = [s for s in api.seen if s.path == AGG]
    assert len(calls) == 2
    assert calls[0].query["maxResults"] == ["500"]
    assert calls[0].query["filter"] == [
        '(labels.deepops-managed = "true") AND (labels.deepops-installation = "i-1234abcd")'
    ]
    assert found[2].tags["deepops-expires-at"] == "2026-11-21t14-00-00z"
    only_eu = readpath.discover(clients, "gpu-lab", INSTALL, regions=["europe-west4"])
    assert [r.machine_id for r in only_eu] == ["m-33334444", "m-55556666"]


def test_utilization_per_gpu_from_cloud_monitoring(api: Api, clients: Clients) -> None:
    answer = fixture("gcp", "time_series_gpu.json")
    first, second = copy.deepcopy(answer), copy.deepcopy(answer)
    first["timeSeries"], first["nextPageToken"] = answer["timeSeries"][:1], "page-2"
    second["timeSeries"] = answer["timeSeries"][1:]

    def series(seen: Seen) -> tuple[int, object, dict[str, str]] | None:
        if seen.path != "/v3/projects/gpu-lab/timeSeries":
            return None
        return 200, (second if seen.query.get("pageToken") else first), {}

    api.on(series)
    now = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    util = readpath.utilization(clients, "gpu-lab", "4567890123456789012", now=now)
    assert util.gpu_percent == [80.0, 5.0]  # GPU 0: mean of 90, 70, 80; GPU 1: of 0, 10
    assert util.active is True
    q = api.seen[0].query
    assert q["filter"] == [
        'metric.type = "agent.googleapis.com/gpu/utilization" AND resource.labels.instance_id = "4567890123456789012"'
    ]
    assert q["interval.endTime"] == ["2026-11-21T14:00:00Z"]
    assert q["interval.startTime"] == ["2026-11-21T13:45:00Z"]


def test_no_series_or_an_unreachable_api_count_as_unknown(api: Api, clients: Clients) -> None:
    api.on(lambda seen: (200, {}, {}) if seen.path.endswith("/timeSeries") else None)
    assert readpath.utilization(clients, "gpu-lab", "1").active is None
    api.on(lambda seen: (503, {"error": {"code": 503, "message": "backend"}}, {}))
    assert readpath.utilization(clients, "gpu-lab", "1").active is None


def test_break_glass_delete_only_ours_and_waits_on_our_own_operation_client(api: Api, clients: Clients) -> None:
    page = fixture("gcp", "aggregated_instances_page1.json")
    ours, foreign = page["items"]["zones/us-central1-a"]["instances"]
    base = "/compute/v1/projects/gpu-lab/zones/us-central1-a"
    op = fixture("gcp", "delete_operation.json")
    polls: list[str] = []

    def route(seen: Seen) -> tuple[int, object, dict[str, str]] | None:
        if seen.method == "GET" and seen.path == f"{base}/instances/deepops-m-0a1b2c3d":
            return 200, ours, {}
        if seen.method == "GET" and seen.path == f"{base}/instances/jupyter-ada":
            return 200, foreign, {}
        if seen.method == "DELETE" and seen.path == f"{base}/instances/deepops-m-0a1b2c3d":
            return 200, op, {}
        if seen.method == "POST" and seen.path == f"{base}/operations/{op['name']}/wait":
            polls.append(seen.path)
            return 200, op | {"status": "DONE" if len(polls) > 1 else "RUNNING", "progress": 100}, {}
        return None

    api.on(route)
    with pytest.raises(UserError, match="not managed by this deepops installation"):
        readpath.delete(clients, "gpu-lab", "us-central1-a", "jupyter-ada", INSTALL)
    with pytest.raises(UserError, match="does not exist"):
        readpath.delete(clients, "gpu-lab", "us-central1-a", "deepops-m-gone", INSTALL)
    assert not [s for s in api.seen if s.method == "DELETE"]
    readpath.delete(clients, "gpu-lab", "us-central1-a", "deepops-m-0a1b2c3d", INSTALL)
    assert [s.path for s in api.seen if s.method == "DELETE"] == [f"{base}/instances/deepops-m-0a1b2c3d"]
    assert len(polls) == 2  # RUNNING, then DONE: polled through the overridden endpoint


def test_verify_pins_with_images_get(api: Api, clients: Clients) -> None:
    from deepops_infra.providers.cloudimages import Pins

    prefix = "/compute/v1/projects/deeplearning-platform-release/global/images/"
    ready, old = fixture("gcp", "image_ready.json"), fixture("gcp", "image_deprecated.json")
    by_name = {ready["name"]: ready, old["name"]: old}
    api.on(
        lambda s: (
            (200, by_name[s.path[len(prefix) :]], {})
            if s.path.startswith(prefix) and s.path[len(prefix) :] in by_name
            else None
        )
    )
    link = "https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release/global/images/"
    pins = {
        "pytorch": Pins(
            "pytorch",
            "ubuntu",
            "/usr/bin/python3",
            {
                "us-central1": link + ready["name"],
                "us-east4": link + ready["name"],
                "europe-west4": link + old["name"],
                "us-east1": link + "common-cu118-v20230101",
            },
        )
    }
    results = {r.region: r for r in images.verify(clients, pins)}
    assert results["us-central1"].ok and results["us-east4"].ok
    assert not results["europe-west4"].ok and "deprecated" in results["europe-west4"].detail
    assert not results["us-east1"].ok and "not found" in results["us-east1"].detail
    assert len([s for s in api.seen if s.path.endswith(ready["name"])]) == 1  # one get per distinct link


def test_the_lock_refuses_families_and_non_links() -> None:
    assert images.problem("https://www.googleapis.com/compute/v1/projects/p-1234/global/images/family/x") is not None
    assert images.problem("ubuntu-2204") is not None
    assert (
        images.problem("https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release/global/images/a-1")
        is None
    )
    assert images.pin_for(
        "cpu-minimal",
        "us-central1",
    ).endswith("common-cu124-v20250325-ubuntu-2204-py310")
