"""Azure break-glass removal and ghost confirmation through azure-mgmt-compute's client against a
local ARM that keeps state: recorded resource documents (tests/fixtures/azure/shared_group.json)
that GET answers, DELETE removes (asynchronously, with Location polling), and that refuses to
delete what is still in use, as ARM does (a NIC of a VM, the IP or NSG of a NIC, an attached disk).

The orphan VM deepops-m-0a1b2c3d shares resource group ml-shared with the live machine
m-11112222: a shared NSG and virtual network, and a scratch disk of the user's, carry no deepops
tags; its NIC, public IP and data disk carry the machine's."""

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("azure.mgmt.compute")

from deepops_infra.config import Settings
from deepops_infra.errors import UserError
from deepops_infra.providers.azure.clients import Clients
from deepops_infra.providers.azure.provider import AzureProvider
from deepops_infra.providers.azure.settings import AzureSettings
from deepops_infra.providers.base import Resource
from tests.fake_api import Api, Seen, fixture, serve
from tests.test_azure_readpath import INSTALL, SUB, Token

ORPHAN, LIVE = "m-0a1b2c3d", "m-11112222"
Answer = tuple[int, Any, dict[str, str]]


def _not_found(code: str, what: str) -> Answer:
    return 404, {"error": {"code": code, "message": f"{what} was not found."}}, {}


def _in_use(code: str, message: str) -> Answer:
    return 400, {"error": {"code": code, "message": message, "details": []}}, {}


class Arm:
    """Resource Manager over a dict of resource documents (IDs compared case-insensitively, as ARM does)."""

    def __init__(self, api: Api, group: dict[str, Any], resources: list[dict[str, Any]]) -> None:
        self.api = api
        self.groups = {group["id"].lower(): group}
        self.docs = {r["id"].lower(): r for r in resources}
        self.deletes: list[str] = []  # names whose DELETE was accepted, in order ("group NAME" for a group)
        self.polls = 0
        api.on(self.route)

    def names(self) -> set[str]:
        return {d["name"] for d in self.docs.values()}

    def _group_of(self, path: str) -> str:
        return "/".join(path.split("/")[:5])

    def _refs(self, doc: dict[str, Any]) -> set[str]:
        """What a resource points at (lower-cased IDs): a VM its NICs and disks, a NIC its IP, NSG, vnet."""
        props = doc.get("properties") or {}
        found = {n["id"] for n in (props.get("networkProfile") or {}).get("networkInterfaces", [])}
        storage = props.get("storageProfile") or {}
        for d in [storage.get("osDisk"), *storage.get("dataDisks", [])]:
            if d and d.get("managedDisk"):
                found.add(d["managedDisk"]["id"])
        if nsg := props.get("networkSecurityGroup"):
            found.add(nsg["id"])
        for config in props.get("ipConfigurations", []):
            inner = config["properties"]
            if ip := inner.get("publicIPAddress"):
                found.add(ip["id"])
            found.add(inner["subnet"]["id"].split("/subnets/")[0])
        return {f.lower() for f in found}

    def _in_use(self, key: str) -> Answer | None:
        users = [d for k, d in self.docs.items() if k != key and key in self._refs(d)]
        if not users:
            return None
        kind = key.split("/providers/")[1].split("/")[1]
        codes = {
            "networkinterfaces": "NicInUse",
            "publicipaddresses": "PublicIPAddressCannotBeDeleted",
            "networksecuritygroups": "InUseNetworkSecurityGroupCannotBeDeleted",
            "virtualnetworks": "InUseSubnetCannotBeDeleted",
            "disks": "OperationNotAllowed",
        }
        return _in_use(codes[kind], f"{key} is in use by {users[0]['id']}")

    def _accepted(self) -> Answer:
        ops = f"{self.api.url}/subscriptions/{SUB}/providers/Microsoft.Network/locations/eastus/operationResults"
        op = f"{ops}/op-{len(self.deletes)}"
        return 202, None, {"Location": op + "?api-version=2024-05-01", "Azure-AsyncOperation": op, "Retry-After": "0"}

    def _delete(self, key: str) -> Answer:
        if key in self.groups:
            self.deletes.append("group " + self.groups.pop(key)["name"])
            for k in [k for k in self.docs if k.startswith(key + "/")]:
                del self.docs[k]
            return self._accepted()
        if key not in self.docs:
            return 204, None, {}
        if busy := self._in_use(key):
            return busy
        doc = self.docs.pop(key)
        self.deletes.append(doc["name"])
        os_disk = ((doc.get("properties") or {}).get("storageProfile") or {}).get("osDisk") or {}
        if os_disk.get("deleteOption") == "Delete":
            self.docs.pop(os_disk["managedDisk"]["id"].lower(), None)
        return self._accepted()

    def route(self, seen: Seen) -> Answer | None:
        key = seen.path.lower().rstrip("/")
        if "/operationresults/" in key:
            self.polls += 1
            return (
                (202, None, {"Location": self.api.url + seen.path, "Retry-After": "0"})
                if self.polls % 2
                else (200, None, {})
            )
        if seen.method == "DELETE":
            return self._delete(key)
        if seen.method != "GET":
            return None
        if key.endswith("/providers/microsoft.compute/virtualmachines"):
            prefix = key[: -len("/providers/microsoft.compute/virtualmachines")] + "/"
            return (
                200,
                {"value": [d for k, d in self.docs.items() if k.startswith(prefix) and "/virtualmachines/" in k]},
                {},
            )
        if key in self.groups:
            return 200, self.groups[key], {}
        if self._group_of(key) not in self.groups:
            return _not_found("ResourceGroupNotFound", f"Resource group '{key.split('/')[4]}'")
        if key in self.docs:
            return 200, self.docs[key], {}
        return _not_found("ResourceNotFound", f"The Resource '{key.split('/providers/')[-1]}'")


def scenario(
    group: str, group_tags: dict[str, str], live_too: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The recorded set moved into `group` (with those tags), with or without the live machine."""
    data = json.loads(json.dumps(fixture("azure", "shared_group.json")).replace("ml-shared/", f"{group}/"))
    data = json.loads(json.dumps(data).replace("ML-SHARED/", f"{group.upper()}/"))
    found = data["resourceGroup"] | {
        "name": group,
        "id": f"/subscriptions/{SUB}/resourceGroups/{group}",
        "tags": group_tags,
    }
    resources = [r for r in data["resources"] if live_too or LIVE not in r["name"]]
    return found, resources


def machine_tags(machine: str) -> dict[str, str]:
    return {"deepops-managed": "true", "deepops-installation": INSTALL, "deepops-machine": machine}


@pytest.fixture
def api() -> Iterator[Api]:
    with serve() as api:
        yield api


@pytest.fixture
def provider(api: Api, tmp_path: Path) -> AzureProvider:
    (tmp_path / "config.yaml").write_text(f"azure:\n  subscription_id: {SUB}\n  regions: [eastus]\n")
    clients = Clients(AzureSettings(subscription_id=SUB, endpoints={"resource_manager": api.url}), credential=Token())
    p = AzureProvider(Settings(home=tmp_path), None, clients=clients)  # type: ignore[arg-type]
    p._installation_id = lambda: INSTALL  # type: ignore[method-assign]
    return p


def orphan_of(arm: Arm) -> Resource:
    [vm] = [d for d in arm.docs.values() if d["name"] == f"deepops-{ORPHAN}"]
    return Resource("azure", ORPHAN, vm["id"], "running", tags=vm["tags"], location="eastus")


def test_an_orphan_in_a_shared_group_takes_only_itself_and_its_tagged_companions(
    api: Api, provider: AzureProvider
) -> None:
    arm = Arm(api, *scenario("ml-shared", {"team": "ml"}))
    before = arm.names()
    note = provider.terminate_resource(orphan_of(arm))
    # The VM first (its OS disk goes with it: deleteOption Delete), then its NIC, then what the NIC held.
    assert arm.deletes == [
        f"deepops-{ORPHAN}",
        f"deepops-{ORPHAN}-nic",
        f"deepops-{ORPHAN}-ip",
        f"deepops-{ORPHAN}-data",
    ]
    assert "group ml-shared" not in arm.deletes and f"/subscriptions/{SUB}/resourcegroups/ml-shared" in arm.groups
    gone = before - arm.names()
    assert {n for n in gone if "OsDisk" not in n} == set(arm.deletes) and len(gone) == len(arm.deletes) + 1
    # The live machine, and what is shared or the user's (no deepops tags), are all still there.
    assert {
        f"deepops-{LIVE}",
        f"deepops-{LIVE}-nic",
        f"deepops-{LIVE}-ip",
        "ml-shared-nsg",
        "ml-shared-vnet",
        "scratch-ada",
    } <= arm.names()
    assert note is not None and "kept resource group ml-shared" in note
    assert "left ml-shared-nsg, ml-shared-vnet, scratch-ada (not tagged as m-0a1b2c3d's)" in note
    assert not [s for s in api.seen if s.method == "DELETE" and LIVE in s.path]
    assert all(s.headers["authorization"] == "Bearer test-token" for s in api.seen)


def test_the_machines_own_group_tagged_and_named_by_its_stack_goes_whole(api: Api, provider: AzureProvider) -> None:
    arm = Arm(api, *scenario(f"deepops-{ORPHAN}", machine_tags(ORPHAN), live_too=False))
    note = provider.terminate_resource(orphan_of(arm))
    assert arm.deletes == [f"group deepops-{ORPHAN}"] and not arm.groups and not arm.docs
    [deleted] = [s for s in api.seen if s.method == "DELETE"]
    assert deleted.path == f"/subscriptions/{SUB}/resourceGroups/deepops-{ORPHAN}"
    assert deleted.query["api-version"] == ["2021-04-01"]
    assert arm.polls == 2  # 202, then done: waited for
    assert note == f"removed resource group deepops-{ORPHAN} whole (tagged and named as {ORPHAN}'s)"


@pytest.mark.parametrize(
    ("group", "group_tags", "live_too", "why"),
    [
        (f"deepops-{ORPHAN}", {"team": "ml"}, False, "is not tagged as m-0a1b2c3d's"),
        (f"deepops-{ORPHAN}", machine_tags(LIVE), False, "is not tagged as m-0a1b2c3d's"),
        (f"deepops-{ORPHAN}", machine_tags(ORPHAN) | {"deepops-installation": "i-other"}, False, "is not tagged"),
        ("gpu-lab", machine_tags(ORPHAN), False, "is not the one its stack names (deepops-m-0a1b2c3d)"),
        (f"deepops-{ORPHAN}", machine_tags(ORPHAN), True, "also holds deepops-m-11112222"),
    ],
    ids=["untagged", "another-machine", "another-installation", "not-the-stacks-name", "holds-another-vm"],
)
def test_a_group_not_provably_the_machines_own_is_kept(
    api: Api, provider: AzureProvider, group: str, group_tags: dict[str, str], live_too: bool, why: str
) -> None:
    arm = Arm(api, *scenario(group, group_tags, live_too))
    note = provider.terminate_resource(orphan_of(arm))
    assert f"group {group}" not in arm.deletes and arm.groups
    assert arm.deletes[0] == f"deepops-{ORPHAN}" and f"deepops-{ORPHAN}-nic" in arm.deletes
    assert note is not None and note.startswith(f"kept resource group {group}: ") and why in note
    if live_too:
        assert {f"deepops-{LIVE}", f"deepops-{LIVE}-nic", f"deepops-{LIVE}-ip"} <= arm.names()


def test_a_companion_without_the_machines_own_tags_is_left(api: Api, provider: AzureProvider) -> None:
    group, resources = scenario("ml-shared", {"team": "ml"}, live_too=False)
    for doc in resources:
        if doc["name"] == f"deepops-{ORPHAN}-ip":
            doc["tags"] = {"deepops-managed": "true", "deepops-installation": INSTALL}  # no machine tag
        if doc["name"] == f"deepops-{ORPHAN}-data":
            doc["tags"] = machine_tags(LIVE)  # another machine's disk, attached here
    arm = Arm(api, group, resources)
    note = provider.terminate_resource(orphan_of(arm))
    assert arm.deletes == [f"deepops-{ORPHAN}", f"deepops-{ORPHAN}-nic"]
    assert {f"deepops-{ORPHAN}-ip", f"deepops-{ORPHAN}-data"} <= arm.names()
    assert (
        note is not None and f"left deepops-{ORPHAN}-ip, ml-shared-nsg, ml-shared-vnet, deepops-{ORPHAN}-data" in note
    )


def test_a_vm_not_ours_or_not_there_is_refused_before_anything_is_deleted(api: Api, provider: AzureProvider) -> None:
    group, resources = scenario("ml-shared", {"team": "ml"})
    for doc in resources:
        if doc["name"] == f"deepops-{ORPHAN}":
            doc["tags"] = {"team": "ml"}
    arm = Arm(api, group, resources)
    with pytest.raises(UserError, match="not managed by this deepops installation"):
        provider.terminate_resource(orphan_of(arm))
    gone = Resource("azure", "m-deadbeef", orphan_of(arm).resource_id.replace(ORPHAN, "m-deadbeef"), "running")
    with pytest.raises(UserError, match="does not exist"):
        provider.terminate_resource(gone)
    assert not [s for s in api.seen if s.method == "DELETE"] and not arm.deletes


def ghost(vm_id: str | None) -> Any:
    return SimpleNamespace(id=ORPHAN, cloud="azure", provider_refs={"vm_id": vm_id} if vm_id else {})


def test_confirm_gone_only_on_arms_not_found(api: Api, provider: AzureProvider) -> None:
    arm = Arm(api, *scenario("ml-shared", {"team": "ml"}))
    vm_id = orphan_of(arm).resource_id
    assert provider.confirm_gone(ghost(vm_id)) is None  # it exists
    assert provider.confirm_gone(ghost(None)) is None  # nothing recorded: cannot tell
    del arm.docs[vm_id.lower()]
    assert provider.confirm_gone(ghost(vm_id)) is not None  # ResourceNotFound
    arm.groups.clear()
    assert provider.confirm_gone(ghost(vm_id)) is not None  # ResourceGroupNotFound


@pytest.mark.parametrize(
    "answer",
    [
        (404, {"error": {"code": 404, "message": "no route"}}, {}),  # a 404 that is not ARM's word
        (404, None, {}),
        (403, {"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization"}}, {}),
        (400, {"error": {"code": "InvalidApiVersionParameter", "message": "unsupported api-version"}}, {}),
    ],
    ids=["foreign-404", "empty-404", "forbidden", "bad-request"],
)
def test_confirm_gone_never_on_another_error(api: Api, provider: AzureProvider, answer: Answer) -> None:
    vm_id = (
        f"/subscriptions/{SUB}/resourceGroups/ml-shared/providers/Microsoft.Compute/virtualMachines/deepops-{ORPHAN}"
    )
    api.on(lambda seen: answer)
    assert provider.confirm_gone(ghost(vm_id)) is None
    assert [s for s in api.seen if s.path == vm_id]  # it did ask


def test_a_delete_answered_with_only_an_async_operation_is_waited_on(api: Api, provider: AzureProvider) -> None:
    from deepops_infra.errors import OperationError
    from deepops_infra.providers.azure import arm

    nic = f"/subscriptions/{SUB}/resourceGroups/ml-shared/providers/Microsoft.Network/networkInterfaces/n1"
    status_url = f"{api.url}/subscriptions/{SUB}/providers/Microsoft.Network/locations/eastus/operations/op-1"
    answers = iter(["InProgress", "Succeeded", "InProgress", "Failed"])

    def route(seen: Seen) -> Answer | None:
        if seen.method == "DELETE" and seen.path == nic:
            return 202, None, {"Azure-AsyncOperation": status_url, "Retry-After": "0"}
        if seen.method == "GET" and status_url.endswith(seen.path):
            status = next(answers)
            error = {"error": {"code": "InternalServerError", "message": "boom"}} if status == "Failed" else {}
            return 200, {"status": status, **error}, {"Retry-After": "0"}
        return None

    api.on(route)
    arm.delete(provider.clients.compute(), nic)
    with pytest.raises(OperationError, match=r"deleting n1 \(failed\).*boom"):
        arm.delete(provider.clients.compute(), nic)
    assert len([s for s in api.seen if s.path.endswith("/operations/op-1")]) == 4
