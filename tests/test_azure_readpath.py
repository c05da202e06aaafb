"""The Azure read path with azure-mgmt-compute and azure-mgmt-monitor against a local server
answering recorded ARM JSON (nextLink pages, power states, spot and deallocated VMs, VMs that
are not ours), through the configured Resource Manager endpoint and a bearer token. Break-glass
removal and ghost confirmation: tests/test_azure_orphans.py."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("azure.mgmt.compute")

from deepops_infra.providers.azure import images, readpath
from deepops_infra.providers.azure.clients import Clients, loopback_http
from deepops_infra.providers.azure.settings import AzureSettings
from tests.fake_api import Api, Seen, fixture, serve

SUB = "00000000-0000-0000-0000-000000000001"
INSTALL = "i-1234abcd"
VMS = f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"


class Token:
    """A TokenCredential: the bearer token the policy puts on every request."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken("test-token", int(datetime.now(UTC).timestamp()) + 3600)


@pytest.fixture
def api() -> Iterator[Api]:
    with serve() as api:
        yield api


@pytest.fixture
def token() -> Token:
    return Token()


@pytest.fixture
def clients(api: Api, token: Token) -> Clients:
    az = AzureSettings(subscription_id=SUB, endpoints={"resource_manager": api.url})
    return Clients(az, credential=token)


def served(api: Api, *parts: str) -> Any:
    """A fixture with its links pointing at the local server."""
    return json.loads(json.dumps(fixture(*parts)).replace("https://management.azure.com", api.url))


def vm_pages(api: Api) -> None:
    def route(seen: Seen) -> tuple[int, Any, dict[str, str]] | None:
        if seen.method != "GET" or seen.path != VMS:
            return None
        if seen.query.get("$skiptoken"):
            return 200, served(api, "azure", "vms_page2.json"), {}
        return 200, served(api, "azure", "vms_page1.json"), {}

    api.on(route)


def test_discover_follows_next_links_with_power_state_and_ignores_what_is_not_ours(
    api: Api, clients: Clients, token: Token
) -> None:
    vm_pages(api)
    found = readpath.discover(clients, INSTALL)
    assert [(r.machine_id, r.state, r.location) for r in found] == [
        ("m-0a1b2c3d", "running", "eastus"),
        ("m-11112222", "running", "westus2"),  # a spot VM
        ("m-33334444", "deallocated", "eastus"),  # deallocated: its disk still bills
    ]
    calls = [s for s in api.seen if s.path == VMS]
    assert len(calls) == 2 and calls[0].query["statusOnly"] == ["true"]
    assert all(s.headers["authorization"] == "Bearer test-token" for s in calls)
    assert token.scopes[0] == (f"{api.url}/.default",)
    assert [r.machine_id for r in readpath.discover(clients, INSTALL, regions=["westus2"])] == ["m-11112222"]


def test_utilization_per_gpu_from_azure_monitor(api: Api, clients: Clients) -> None:
    vm_id = fixture("azure", "vms_page1.json")["value"][0]["id"]
    api.on(
        lambda s: (
            (200, fixture("azure", "metrics_gpu.json"), {})
            if s.path == f"{vm_id}/providers/Microsoft.Insights/metrics"
            else None
        )
    )
    now = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    util = readpath.utilization(clients, vm_id, now=now)
    assert util.gpu_percent == [80.0, 5.0]  # GPU 0: mean of 90, 70; GPU 1: of 0, 10
    assert util.gpu_memory_percent == [40.0, 25.0]
    assert util.active is True
    q = api.seen[-1].query
    assert q["timespan"] == ["2026-11-21T13:45:00Z/2026-11-21T14:00:00Z"]
    assert q["metricnamespace"] == ["telegraf/nvidia_smi"]
    assert q["$filter"] == ["index eq '*'"]
    assert readpath.utilization(clients, vm_id.replace("m-0a1b2c3d", "m-nothing"), now=now).active is None


def test_a_token_goes_over_plain_http_only_to_a_loopback_endpoint(token: Token) -> None:
    from azure.core.exceptions import ServiceRequestError

    assert loopback_http("http://127.0.0.1:8080") and not loopback_http("http://arm.example.com")
    remote = Clients(AzureSettings(subscription_id=SUB, endpoints={"resource_manager": "http://192.0.2.1:9"}), token)
    with pytest.raises(ServiceRequestError, match="non-TLS"):
        list(remote.compute().virtual_machines.list_all(status_only="true"))


def test_verify_pins_against_the_marketplace(api: Api, clients: Clients) -> None:
    from deepops_infra.providers.cloudimages import Pins

    path = (
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/eastus/publishers/microsoft-dsvm"
        "/artifacttypes/vmimage/offers/ubuntu-hpc/skus/2204/versions/22.04.2025052101"
    )
    api.on(lambda s: (200, fixture("azure", "vm_image.json"), {}) if s.path == path else None)
    urn = "microsoft-dsvm:ubuntu-hpc:2204:22.04.2025052101"
    pins = {"pytorch": Pins("pytorch", "azureuser", "/usr/bin/python3", {"eastus": urn, "westus2": urn})}
    results = {r.region: r for r in images.verify(clients.compute(), pins)}
    assert results["eastus"].ok, results["eastus"].detail
    assert not results["westus2"].ok and "not found in westus2" in results["westus2"].detail


def test_the_lock_refuses_latest_and_reads_the_shipped_pins() -> None:
    assert images.problem("microsoft-dsvm:ubuntu-hpc:2204:latest") is not None
    assert images.problem("Canonical:ubuntu:22_04-lts") is not None
    gallery = (
        f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/gpu/versions/1.2.3"
    )
    assert images.problem(gallery) is None
    assert images.image_reference(gallery) == {"id": gallery}
    assert images.image_reference("a:b:c:1.2.3") == {"publisher": "a", "offer": "b", "sku": "c", "version": "1.2.3"}
    assert images.pin_for("cpu-minimal", "eastus") == "microsoft-dsvm:ubuntu-hpc:2204:22.04.2025052101"
