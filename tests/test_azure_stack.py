"""stacks/azure under Pulumi's mocks: one resource group per machine, every input checked."""

import json
from typing import Any

import pytest

pytest.importorskip("pulumi_azure_native")

from tests.pulumi_programs import run_program

TAGS = {
    "deepops-managed": "true",
    "deepops-machine": "m-0a1b2c3d",
    "deepops-owner": "ada",
    "deepops-team": "vision",
    "deepops-project": "detr",
    "deepops-expires-at": "2026-11-21T14:00:00Z",
    "deepops-installation": "i-1234abcd",
}
URN = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "22.04.2025052101"}
BASE: dict[str, Any] = {
    "machineId": "m-0a1b2c3d",
    "instanceType": "Standard_NC24ads_A100_v4",
    "location": "eastus",
    "imageReference": URN,
    "diskGb": 256,
    "sshCidr": "203.0.113.7/32",
    "adminUser": "azureuser",
    "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnK deepops-m-0a1b2c3d",
    "tags": TAGS,
    "spot": False,
    "shutdownTime": "1500",
}
VM = "azure-native:compute:VirtualMachine"
OUTPUTS = {  # what ARM answers beyond the inputs: resource names, addresses
    "azure-native:resources:ResourceGroup": {"name": "deepops-m-0a1b2c3d"},
    "azure-native:network:VirtualNetwork": {"name": "deepops-m-0a1b2c3d-vnet"},
    "azure-native:network:PublicIPAddress": {"ipAddress": "198.51.100.20"},
    "azure-native:network:NetworkInterface": {
        "ipConfigurations": [{"name": "primary", "privateIPAddress": "10.8.0.4"}]
    },
}
UNTAGGABLE = {"azure-native:network:Subnet"}


def run(config: dict[str, Any]) -> Any:
    return run_program(
        "azure",
        config,
        {"azure-native:location": "eastus", "azure-native:subscriptionId": "00000000-0000-0000-0000-000000000001"},
        OUTPUTS,
    )


def test_every_taggable_resource_is_tagged_and_lives_in_the_machines_group() -> None:
    mocks, exported = run(BASE)
    types = sorted(r.typ for r in mocks.resources)
    assert types == sorted(
        [
            "azure-native:resources:ResourceGroup",
            "azure-native:network:VirtualNetwork",
            "azure-native:network:Subnet",
            "azure-native:network:NetworkSecurityGroup",
            "azure-native:network:PublicIPAddress",
            "azure-native:network:NetworkInterface",
            VM,
            "azure-native:devtestlab:GlobalSchedule",
        ]
    )
    for r in mocks.resources:
        if r.typ not in UNTAGGABLE:
            assert r.inputs["tags"] == TAGS, r.typ
        if r.typ != "azure-native:resources:ResourceGroup":
            assert r.inputs["resourceGroupName"] == "deepops-m-0a1b2c3d", r.typ
    [group] = mocks.of("azure-native:resources:ResourceGroup")
    assert group.inputs["resourceGroupName"] == "deepops-m-0a1b2c3d"
    assert set(exported) == {"vm_id", "resource_group", "public_ip", "private_ip"}


def test_ssh_only_from_the_requester_key_only_login() -> None:
    mocks, _ = run(BASE)
    [nsg] = mocks.of("azure-native:network:NetworkSecurityGroup")
    [rule] = nsg.inputs["securityRules"]
    assert (rule["direction"], rule["access"], rule["protocol"]) == ("Inbound", "Allow", "Tcp")
    assert (rule["sourceAddressPrefix"], rule["destinationPortRange"]) == ("203.0.113.7/32", "22")
    [nic] = mocks.of("azure-native:network:NetworkInterface")
    assert nic.inputs["networkSecurityGroup"] == {"id": "m-0a1b2c3d-nsg-id"}
    [vm] = mocks.of(VM)
    linux = vm.inputs["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [
        {"path": "/home/azureuser/.ssh/authorized_keys", "keyData": BASE["publicKey"]}
    ]
    assert "adminPassword" not in vm.inputs["osProfile"]
    assert "PRIVATE" not in json.dumps([r.inputs for r in mocks.resources])


def test_vm_pinned_image_encrypted_disks_on_demand_and_shutdown_backstop() -> None:
    mocks, _ = run(BASE)
    [vm] = mocks.of(VM)
    v = vm.inputs
    assert v["hardwareProfile"] == {"vmSize": "Standard_NC24ads_A100_v4"}
    assert v["storageProfile"]["imageReference"] == URN
    disk = v["storageProfile"]["osDisk"]
    assert (disk["diskSizeGB"], disk["deleteOption"], disk["managedDisk"]["storageAccountType"]) == (
        256,
        "Delete",
        "Premium_LRS",
    )
    assert v["securityProfile"] == {"encryptionAtHost": True}
    assert "priority" not in v and "evictionPolicy" not in v
    [schedule] = mocks.of("azure-native:devtestlab:GlobalSchedule")
    s = schedule.inputs
    assert (s["status"], s["taskType"], s["timeZoneId"]) == ("Enabled", "ComputeVmShutdownTask", "UTC")
    assert s["dailyRecurrence"] == {"time": "1500"}
    assert s["targetResourceId"] == "m-0a1b2c3d-id"


def test_the_shutdown_schedule_can_be_off() -> None:
    mocks, _ = run(BASE | {"shutdownEnabled": False})
    [schedule] = mocks.of("azure-native:devtestlab:GlobalSchedule")
    assert schedule.inputs["status"] == "Disabled"


def test_spot_is_evicted_by_delete() -> None:
    mocks, _ = run(BASE | {"spot": True})
    [vm] = mocks.of(VM)
    assert (vm.inputs["priority"], vm.inputs["evictionPolicy"]) == ("Spot", "Delete")
    assert vm.inputs["billingProfile"] == {"maxPrice": -1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sshCidr": "0.0.0.0/0"}, "whole internet"),
        ({"imageReference": URN | {"version": "latest"}}, "never latest"),
    ],
)
def test_open_ssh_and_latest_images_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        run(BASE | change)
