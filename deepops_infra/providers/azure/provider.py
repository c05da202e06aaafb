"""The Azure provider: a machine is a Pulumi stack (stacks/azure) of its own resource group; what
the clouds share is in providers/cloud.py, the read path in readpath.py, orphan removal in breakglass.py."""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from deepops_infra.providers.azure import breakglass, images, readpath
from deepops_infra.providers.azure.clients import Clients
from deepops_infra.providers.azure.settings import AzureSettings, azure_settings
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.cloud import Login, PulumiCloudProvider, backstop_seconds
from deepops_infra.providers.cloudimages import summary

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine


def shutdown_schedule(settings: Any, machine: "Machine") -> tuple[str, bool]:
    """Azure's auto-shutdown is a daily time (HHMM, UTC). It is set to the latest moment the machine
    may live (creation + the team's max_ttl + the grace hour, the same backstop as GCP's) and is
    enabled only when that moment is within a day of creation: a daily schedule would otherwise
    fire first inside a lease that extensions may still lengthen."""
    seconds = backstop_seconds(settings, machine)
    at = machine.created_at + timedelta(seconds=seconds)
    return at.strftime("%H%M"), seconds <= 24 * 3600


class AzureProvider(PulumiCloudProvider):
    cloud = "azure"

    default_login = Login("azureuser")

    def load_conf(self) -> AzureSettings:
        return azure_settings(self.settings)

    def make_clients(self, conf: AzureSettings) -> Clients:
        return Clients(conf)

    def pins(self, image: str) -> Any:
        return images.load_pins().get(image)

    def pin_for(self, image: str, region: str) -> str | None:
        return images.pin_for(image, region)

    def cloud_config(self, machine: "Machine") -> dict[str, Any]:
        login = self.login_for(machine.image)
        shutdown = shutdown_schedule(self.settings, machine)
        return {
            "azure-native:location": machine.region,
            "azure-native:subscriptionId": self.conf.require_subscription(),
            "location": machine.region,
            "imageReference": images.image_reference(machine.image_pin or ""),
            "adminUser": self.conf.ssh_user or login.ssh_user,
            "shutdownTime": shutdown[0],
            "shutdownEnabled": shutdown[1],
        }

    def refs_from(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {"vm_id": outputs.get("vm_id"), "resource_group": outputs.get("resource_group")}

    def discover(self) -> list[Resource]:
        return readpath.discover(self.clients, self._installation_id(), self.regions())

    def utilization(self, machine: "Machine") -> Utilization | None:
        vm_id = (machine.provider_refs or {}).get("vm_id")
        return readpath.utilization(self.clients, str(vm_id)) if vm_id else None

    def confirm_gone(self, machine: "Machine") -> datetime | None:
        """A ghost is closed only on ARM's word: the machine's VM (or its group) is not found."""
        vm_id = (machine.provider_refs or {}).get("vm_id")
        return readpath.gone_since(self.clients, str(vm_id)) if vm_id else None

    def terminate_resource(self, resource: Resource) -> str | None:
        """Break-glass removal of an orphan VM that carries this installation's tags: its resource
        group only when that is provably the machine's own, else the VM and its tagged companions."""
        return breakglass.remove_vm(self.clients, resource.resource_id, self._installation_id())

    def pin_summary(self) -> tuple[bool, str]:
        return summary(images.load_pins(), images.LOCK_NAME)
