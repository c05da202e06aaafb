"""The GCP and Azure providers' stack config is what their programs read: each provider builds the
config for a machine, and the program runs on exactly that under Pulumi's mocks."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("pulumi_gcp")
pytest.importorskip("pulumi_azure_native")

from deepops_infra.config import Settings
from deepops_infra.errors import UserError
from deepops_infra.providers import get_provider
from tests.pulumi_programs import run_program

CREATED = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def machine(cloud: str, region: str, instance_type: str, accelerator: str, count: int, pin: str, spot: bool) -> Any:
    return SimpleNamespace(
        id="m-0a1b2c3d",
        cloud=cloud,
        region=region,
        image="cpu-minimal",
        image_pin=pin,
        owner="ada",
        team="vision",
        project="detr",
        created_at=CREATED,
        expires_at=CREATED + timedelta(hours=8),
        plan={"instance_type": instance_type, "accelerator": accelerator, "accelerator_count": count},
        request={"spot": spot, "disk_gb": 150},
        price_breakdown={"disk_gb": 150},
        provider_refs={},
    )


def provider(home: Path, cloud: str, config: str) -> Any:
    (home / "config.yaml").write_text(config)
    p = get_provider(cloud, Settings(home=home), None)  # type: ignore[arg-type]
    p._installation_id = lambda: "inst-0123456789ab"  # the ledger's ID, not the point here
    return p


def test_gcp_config_runs_the_program(tmp_path: Path) -> None:
    p = provider(
        tmp_path,
        "gcp",
        "gcp:\n  project: gpu-lab\n  ssh_cidr: 198.51.100.0/24\n  zones: {us-central1: us-central1-c}\n",
    )
    pin = p.pin_for("cpu-minimal", "us-central1")
    config = p.stack_config(machine("gcp", "us-central1", "n1-standard-8", "T4", 1, pin, spot=True))
    assert config["zone"] == "us-central1-c" and config["guestAccelerator"] == "nvidia-tesla-t4"
    assert config["maxRunSeconds"] == 7 * 86400 + 3600  # default max_ttl 7 days + the grace hour
    assert config["labels"]["deepops-expires-at"] == "2026-11-21t14-00-00z"
    assert config["labels"]["deepops-installation"] == "inst-0123456789ab"
    assert (tmp_path / "keys" / "m-0a1b2c3d.pem").stat().st_mode & 0o777 == 0o600
    provider_keys = {k: config.pop(k) for k in [k for k in config if ":" in k]}
    mocks, _ = run_program("gcp", config, provider_keys, {})
    [inst] = mocks.of("gcp:compute/instance:Instance")
    assert inst.inputs["bootDisk"]["initializeParams"]["image"] == pin
    assert inst.inputs["bootDisk"]["initializeParams"]["size"] == 150
    assert inst.inputs["scheduling"]["provisioningModel"] == "SPOT"
    [fw] = mocks.of("gcp:compute/firewall:Firewall")
    assert fw.inputs["sourceRanges"] == ["198.51.100.0/24"]


def test_gcp_needs_a_project_and_an_accelerator_type_for_n1(tmp_path: Path) -> None:
    p = provider(tmp_path, "gcp", "gcp:\n  ssh_cidr: 198.51.100.0/24\n")
    with pytest.raises(UserError, match=r"gcp\.project is not set"):
        p.stack_config(machine("gcp", "us-central1", "a2-highgpu-1g", "A100", 1, "x", spot=False))
    assert not (tmp_path / "keys").exists()  # refused before any key was made
    p = provider(tmp_path, "gcp", "gcp:\n  project: gpu-lab\n  ssh_cidr: 198.51.100.0/24\n")
    with pytest.raises(UserError, match="no GCP accelerator type known for L4"):
        p.stack_config(machine("gcp", "us-central1", "n1-standard-8", "L4", 1, "x", spot=False))


def test_azure_config_runs_the_program(tmp_path: Path) -> None:
    p = provider(
        tmp_path,
        "azure",
        "azure:\n  subscription_id: 00000000-0000-0000-0000-000000000001\n  ssh_cidr: 198.51.100.7/32\n",
    )
    pin = p.pin_for("cpu-minimal", "eastus")
    config = p.stack_config(machine("azure", "eastus", "Standard_NC24ads_A100_v4", "A100-80GB", 1, pin, spot=True))
    assert config["imageReference"] == {
        "publisher": "microsoft-dsvm",
        "offer": "ubuntu-hpc",
        "sku": "2204",
        "version": "22.04.2025052101",
    }
    # Default max_ttl 7 days: the daily schedule would fire inside the lease, so it is off ...
    assert (config["shutdownTime"], config["shutdownEnabled"]) == ("0700", False)
    assert config["adminUser"] == "azureuser"
    # ... with max_ttl 12h it fires at creation 06:00 + 12 h + the grace hour.
    (tmp_path / "config.yaml").write_text(
        "azure:\n  subscription_id: 00000000-0000-0000-0000-000000000001\n  ssh_cidr: 198.51.100.7/32\n"
        "policy:\n  default:\n    max_ttl: 12h\n    default_ttl: 8h\n"
    )
    p = provider(tmp_path, "azure", (tmp_path / "config.yaml").read_text())
    config = p.stack_config(machine("azure", "eastus", "Standard_NC24ads_A100_v4", "A100-80GB", 1, pin, spot=True))
    assert (config["shutdownTime"], config["shutdownEnabled"]) == ("1900", True)
    provider_keys = {k: config.pop(k) for k in [k for k in config if ":" in k]}
    outputs = {
        "azure-native:resources:ResourceGroup": {"name": "deepops-m-0a1b2c3d"},
        "azure-native:network:VirtualNetwork": {"name": "deepops-m-0a1b2c3d-vnet"},
    }
    mocks, _ = run_program("azure", config, provider_keys, outputs)
    [vm] = mocks.of("azure-native:compute:VirtualMachine")
    assert (vm.inputs["priority"], vm.inputs["evictionPolicy"]) == ("Spot", "Delete")
    assert vm.inputs["tags"]["deepops-expires-at"] == "2026-11-21T14:00:00Z"
    [nsg] = mocks.of("azure-native:network:NetworkSecurityGroup")
    assert nsg.inputs["securityRules"][0]["sourceAddressPrefix"] == "198.51.100.7/32"
    [schedule] = mocks.of("azure-native:devtestlab:GlobalSchedule")
    assert (schedule.inputs["status"], schedule.inputs["dailyRecurrence"]) == ("Enabled", {"time": "1900"})


def test_bad_cloud_settings_name_the_key_and_line(tmp_path: Path) -> None:
    from deepops_infra.yamlfile import FileError

    p = provider(tmp_path, "azure", "azure:\n  subscription_id: x\n  ssh_cidr: 0.0.0.0/0\n")
    with pytest.raises(FileError, match=r"azure.ssh_cidr: 0.0.0.0/0 opens SSH to everyone"):
        _ = p.conf
    p = provider(tmp_path, "gcp", "gcp:\n  zones: {us-central1: europe-west4-a}\n")
    with pytest.raises(FileError, match=r"gcp.zones: a mapping of region -> zone"):
        _ = p.conf
    p = provider(tmp_path, "gcp", "gcp:\n  endpoint: http://x\n")
    with pytest.raises(FileError, match=r"gcp.endpoint: unknown setting"):
        _ = p.conf
