"""stacks/gcp under Pulumi's mocks: the resource graph the program declares, input by input."""

import json
from typing import Any

import pytest

pytest.importorskip("pulumi_gcp")

from deepops_infra import tags
from tests.pulumi_programs import run_program

DESIGN = {
    "deepops-managed": "true",
    "deepops-machine": "m-0a1b2c3d",
    "deepops-owner": "Ada.Lovelace",
    "deepops-team": "vision",
    "deepops-project": "detr",
    "deepops-expires-at": "2026-11-21T14:00:00Z",
    "deepops-installation": "i-1234abcd",
}
LABELS = tags.gcp_labels(DESIGN)
IMAGE = (
    "https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release/global/images/"
    "common-cu124-v20250325-ubuntu-2204-py310"
)
BASE: dict[str, Any] = {
    "machineId": "m-0a1b2c3d",
    "instanceType": "a2-highgpu-1g",
    "guestAccelerator": "",
    "acceleratorCount": 1,
    "zone": "us-central1-c",
    "network": "default",
    "image": IMAGE,
    "diskGb": 200,
    "sshCidr": "203.0.113.7/32",
    "sshUser": "ubuntu",
    "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnK deepops-m-0a1b2c3d",
    "labels": LABELS,
    "spot": False,
    "maxRunSeconds": 7 * 86400 + 3600,
}
OUTPUTS = {
    "gcp:compute/instance:Instance": {
        "instanceId": "4567890123456789012",
        "networkInterfaces": [{"networkIp": "10.128.0.7", "accessConfigs": [{"natIp": "198.51.100.9"}]}],
    }
}


def run(config: dict[str, Any]) -> Any:
    return run_program("gcp", config, {"gcp:project": "gpu-lab", "gcp:region": "us-central1"}, OUTPUTS)


def test_labels_are_the_design_tags_in_gcp_charset() -> None:
    assert LABELS["deepops-expires-at"] == "2026-11-21t14-00-00z"
    assert LABELS["deepops-owner"] == "ada-lovelace"
    mocks, _ = run(BASE)
    [inst] = mocks.of("gcp:compute/instance:Instance")
    assert inst.inputs["labels"] == LABELS
    assert inst.inputs["bootDisk"]["initializeParams"]["labels"] == LABELS  # the disk too
    assert sorted(r.typ for r in mocks.resources) == ["gcp:compute/firewall:Firewall", "gcp:compute/instance:Instance"]


def test_instance_pinned_image_terminate_on_maintenance_ttl_backstop_shielded() -> None:
    mocks, exported = run(BASE)
    [inst] = mocks.of("gcp:compute/instance:Instance")
    i = inst.inputs
    assert (i["name"], i["zone"], i["machineType"]) == ("deepops-m-0a1b2c3d", "us-central1-c", "a2-highgpu-1g")
    assert i["bootDisk"]["initializeParams"]["image"] == IMAGE
    assert i["bootDisk"]["autoDelete"] is True
    s = i["scheduling"]
    assert s["onHostMaintenance"] == "TERMINATE" and s["automaticRestart"] is False
    assert s["provisioningModel"] == "STANDARD" and s["preemptible"] is False
    assert s["instanceTerminationAction"] == "DELETE"
    assert s["maxRunDuration"] == {"seconds": 608400}
    assert "guestAccelerators" not in i  # a2 carries its GPUs
    assert i["shieldedInstanceConfig"] == {
        "enableSecureBoot": False,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    assert set(exported) == {"instance_name", "instance_id", "zone", "public_ip", "private_ip"}


def test_ssh_only_from_the_requester_with_the_machine_key() -> None:
    mocks, _ = run(BASE)
    [fw] = mocks.of("gcp:compute/firewall:Firewall")
    [inst] = mocks.of("gcp:compute/instance:Instance")
    assert fw.inputs["sourceRanges"] == ["203.0.113.7/32"]
    assert fw.inputs["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert fw.inputs["direction"] == "INGRESS"
    assert fw.inputs["targetTags"] == inst.inputs["tags"] == ["deepops-m-0a1b2c3d"]
    meta = inst.inputs["metadata"]
    assert meta["ssh-keys"] == f"ubuntu:{BASE['publicKey']}"
    assert meta["block-project-ssh-keys"] == "true"
    assert "PRIVATE" not in json.dumps([r.inputs for r in mocks.resources])


def test_spot_n1_with_attached_t4s() -> None:
    mocks, _ = run(
        BASE
        | {"spot": True, "instanceType": "n1-standard-16", "guestAccelerator": "nvidia-tesla-t4", "acceleratorCount": 2}
    )
    [inst] = mocks.of("gcp:compute/instance:Instance")
    s = inst.inputs["scheduling"]
    assert (s["provisioningModel"], s["preemptible"], s["instanceTerminationAction"]) == ("SPOT", True, "DELETE")
    assert inst.inputs["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 2}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sshCidr": "0.0.0.0/0"}, "whole internet"),
        ({"image": "projects/deeplearning-platform-release/global/images/family/common-cu124"}, "not a pinned"),
    ],
)
def test_open_ssh_and_image_families_are_refused(change: dict[str, str], message: str) -> None:
    with pytest.raises(Exception, match=message):
        run(BASE | change)
