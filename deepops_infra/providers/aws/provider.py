"""The AWS provider: a machine is a Pulumi stack (stacks/aws) made from a catalog offer.

Decisions are taken here before Pulumi runs (offer by placement, AMI pin, tags, SSH CIDR, key);
the stack only declares resources from its config. What every cloud shares (plans, create,
SSH, configure, destroy) is in providers/cloud.py; the read path is boto3 (readpath.py).
"""

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import OperationError
from deepops_infra.providers.aws import readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.images import pin_for, pins_of
from deepops_infra.providers.aws.settings import AwsSettings, aws_settings
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.cloud import HOURS_PER_MONTH, PulumiCloudProvider, offer_price

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine

__all__ = ["HOURS_PER_MONTH", "SSH_WAIT_S", "AwsProvider", "offer_price"]

SSH_WAIT_S = 600


class AwsProvider(PulumiCloudProvider):
    cloud = "aws"

    def load_conf(self) -> AwsSettings:
        return aws_settings(self.settings)

    def make_clients(self, conf: AwsSettings) -> Clients:
        return Clients(conf)

    @property
    def aws(self) -> AwsSettings:
        return self.conf

    def gb_month(self) -> Decimal:
        return self.aws.gp3_gb_month

    def ssh_wait_s(self) -> float:
        return SSH_WAIT_S

    def pin_for(self, image: str, region: str) -> str | None:
        return pin_for(image, region)

    def pins(self, image: str) -> Any:
        return pins_of(image)

    def cloud_config(self, machine: "Machine") -> dict[str, Any]:
        return {"aws:region": machine.region, "ami": machine.image_pin}

    def refs_from(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {"instance_id": outputs.get("instance_id"), "availability_zone": outputs.get("availability_zone")}

    # -- read path ---------------------------------------------------------------------------

    def discover(self) -> list[Resource]:
        return readpath.discover(self.clients, self.regions(), self._installation_id())

    def utilization(self, machine: "Machine") -> Utilization | None:
        instance_id = (machine.provider_refs or {}).get("instance_id")
        if not instance_id or not machine.region:
            return None
        return readpath.utilization(self.clients, machine.region, instance_id)

    def confirm_gone(self, machine: "Machine") -> datetime | None:
        """A ghost is closed only on EC2's word: the instance is terminated or unknown."""
        instance_id = (machine.provider_refs or {}).get("instance_id")
        if not instance_id or not machine.region:
            return None
        return readpath.gone_since(self.clients, machine.region, instance_id)

    def terminate_resource(self, resource: Resource) -> None:
        """Break-glass terminate by instance ID (the instance must carry this installation's tags)."""
        location = resource.location or ""
        region = location[:-1] if location[-1:].isalpha() else location  # us-east-1b -> us-east-1
        state = readpath.terminate(self.clients, region, resource.resource_id, self._installation_id())
        if state not in ("shutting-down", "terminated"):
            raise OperationError(f"{resource.resource_id}: EC2 reports {state} after terminate")

    def pin_summary(self) -> tuple[bool, str]:
        from deepops_infra.providers.aws.images import load_pins

        pins = load_pins()
        detail = "; ".join(f"{name}: {', '.join(sorted(p.regions))}" for name, p in sorted(pins.items()))
        return bool(pins), detail or "images/aws.lock.yaml has no pins"
