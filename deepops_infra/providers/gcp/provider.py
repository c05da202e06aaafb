"""The GCP provider: a machine is a Pulumi stack (stacks/gcp) made from a catalog offer; everything
common to the clouds is in providers/cloud.py, the read path in readpath.py."""

from datetime import datetime
from typing import TYPE_CHECKING, Any

from deepops_infra import tags
from deepops_infra.errors import UserError
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.cloud import PulumiCloudProvider, backstop_seconds
from deepops_infra.providers.cloudimages import summary
from deepops_infra.providers.gcp import images, readpath
from deepops_infra.providers.gcp.clients import Clients
from deepops_infra.providers.gcp.settings import GcpSettings, gcp_settings

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine


# n1 machine types take their GPUs as attached accelerators; a2/a3/g2 carry theirs.
GUEST_ACCELERATORS = {"T4": "nvidia-tesla-t4", "V100": "nvidia-tesla-v100", "P100": "nvidia-tesla-p100"}


class GcpProvider(PulumiCloudProvider):
    cloud = "gcp"

    def load_conf(self) -> GcpSettings:
        return gcp_settings(self.settings)

    def make_clients(self, conf: GcpSettings) -> Clients:
        return Clients(conf)

    def pins(self, image: str) -> Any:
        return images.load_pins().get(image)

    def pin_for(self, image: str, region: str) -> str | None:
        return images.pin_for(image, region)

    def cloud_config(self, machine: "Machine") -> dict[str, Any]:
        plan = machine.plan
        instance_type = str(plan["instance_type"])
        count = int(plan.get("accelerator_count") or 0)
        guest = GUEST_ACCELERATORS.get(str(plan.get("accelerator"))) if instance_type.startswith("n1-") else None
        if instance_type.startswith("n1-") and guest is None:
            raise UserError(f"{instance_type}: no GCP accelerator type known for {plan.get('accelerator')}")
        return {
            "gcp:project": self.conf.require_project(),
            "gcp:region": machine.region,
            "zone": self.conf.zone(machine.region or ""),
            "network": self.conf.network,
            "image": machine.image_pin,
            "guestAccelerator": guest or "",
            "acceleratorCount": count,
            "sshUser": self.conf.ssh_user or self.login_for(machine.image).ssh_user,
            "labels": tags.gcp_labels(self.machine_tags(machine)),
            # The cloud's own backstop: GCP deletes the instance once it has run for the longest lease
            # the team may have (extensions stay within it) plus a grace hour.
            "maxRunSeconds": backstop_seconds(self.settings, machine),
        }

    def refs_from(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "instance_name": outputs.get("instance_name"),
            "instance_id": outputs.get("instance_id"),
            "zone": outputs.get("zone"),
        }

    def discover(self) -> list[Resource]:
        return readpath.discover(self.clients, self.conf.require_project(), self._installation_id(), self.regions())

    def utilization(self, machine: "Machine") -> Utilization | None:
        instance_id = (machine.provider_refs or {}).get("instance_id")
        if not instance_id:
            return None
        return readpath.utilization(self.clients, self.conf.require_project(), str(instance_id))

    def confirm_gone(self, machine: "Machine") -> datetime | None:
        """A ghost is closed only on Compute Engine's word: the machine's instance is not found."""
        refs = machine.provider_refs or {}
        name, zone = refs.get("instance_name"), refs.get("zone")
        if not name or not zone or not self.conf.project:
            return None
        return readpath.gone_since(self.clients, self.conf.project, str(zone).rsplit("/", 1)[-1], str(name))

    def terminate_resource(self, resource: Resource) -> None:
        """Break-glass delete by name in its zone, running or stopped (the instance must carry this
        installation's labels). Its boot disk goes with it (autoDelete)."""
        readpath.delete(
            self.clients,
            self.conf.require_project(),
            resource.location or "",
            resource.resource_id,
            self._installation_id(),
        )

    def pin_summary(self) -> tuple[bool, str]:
        return summary(images.load_pins(), images.LOCK_NAME)
