"""The AWS provider: a machine is a Pulumi stack (stacks/aws) made from a catalog offer.

Decisions are taken here before Pulumi runs (offer by placement, AMI pin, tags, SSH CIDR, key);
the stack only declares resources from its config. What every cloud shares (plans, create,
SSH, configure, destroy) is in providers/cloud.py; the read path is boto3 (readpath.py).
"""

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import OperationError
from deepops_infra.providers.aws import companions, images, readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.settings import AwsSettings, aws_settings
from deepops_infra.providers.base import Resource, Utilization
from deepops_infra.providers.cloud import HOURS_PER_MONTH, PulumiCloudProvider, offer_price
from deepops_infra.providers.cloudimages import summary

if TYPE_CHECKING:
    from deepops_infra.agent.settings import AgentSettings
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
        return images.pin_for(image, region)

    def pins(self, image: str) -> Any:
        return images.load_pins().get(image)

    def cloud_config(self, machine: "Machine") -> dict[str, Any]:
        """Region and AMI, and the instance's IAM: a role allowing PutMetricData into the namespace
        the agent publishes to (and the reaper reads), unless `aws.agent_metrics: false` or no agent."""
        from deepops_infra.agent.settings import AgentSettings

        agent = AgentSettings.load(self.settings)
        return {
            "aws:region": machine.region,
            "ami": machine.image_pin,
            "agentMetrics": self.aws.agent_metrics and agent.enabled,
            "metricsNamespace": agent.cloudwatch_namespace(),
        }

    def refs_from(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {"instance_id": outputs.get("instance_id"), "availability_zone": outputs.get("availability_zone")}

    def agent_sinks(self, machine: "Machine", agent: "AgentSettings") -> list[dict[str, Any]]:
        """Agents on AWS publish to CloudWatch in the machine's region (namespace DeepOps unless
        `agent.sinks` names another): what utilization_many reads. The instance's credentials come
        from the stack's role (cloud_config's agentMetrics) and boto3 must be on the image; without
        either the agent logs the failure and carries on."""
        others = [s for s in agent.sinks if s.get("type") != "cloudwatch"]
        configured = next((s for s in agent.sinks if s.get("type") == "cloudwatch"), {})
        cloudwatch = {**configured, "type": "cloudwatch", "namespace": agent.cloudwatch_namespace()}
        return [{**cloudwatch, "region": machine.region}, *others]

    # -- read path ---------------------------------------------------------------------------

    def discover(self) -> list[Resource]:
        return readpath.discover(self.clients, self.regions(), self._installation_id())

    def utilization(self, machine: "Machine") -> Utilization | None:
        return self.utilization_many([machine])[machine.id]

    def utilization_many(self, machines: "list[Machine]") -> dict[str, Utilization | None]:
        """Per region, one batched read of what the machines' agents published (CloudWatch)."""
        from deepops_infra.agent.settings import AgentSettings

        namespace = AgentSettings.load(self.settings).cloudwatch_namespace()
        readings: dict[str, Utilization | None] = {}
        by_region: dict[str, dict[str, str]] = defaultdict(dict)
        for m in machines:
            instance_id = (m.provider_refs or {}).get("instance_id")
            if instance_id and m.region:
                by_region[m.region][m.id] = instance_id
            else:
                readings[m.id] = None  # nothing was created: nothing to read
        for region, instances in by_region.items():
            readings |= readpath.utilization_many(self.clients, region, instances, namespace=namespace)
        return readings

    def confirm_gone(self, machine: "Machine") -> datetime | None:
        """A ghost is closed only on EC2's word: the instance is terminated or unknown."""
        instance_id = (machine.provider_refs or {}).get("instance_id")
        if not instance_id or not machine.region:
            return None
        return readpath.gone_since(self.clients, machine.region, instance_id)

    def discover_leftovers(self, found: list[Resource]) -> list[Resource]:
        """What stacks/aws made beside the instances of machines with no live instance in `found` (a
        break-glass terminate's security group still in use then, a failed destroy's remains)."""
        busy = {r.machine_id for r in found if r.machine_id}
        iam = self._iam_region() if self.aws.agent_metrics else None
        return companions.companions(self.clients, self.regions(), self._installation_id(), iam, skip=busy)

    def terminate_resource(self, resource: Resource) -> str | None:
        """Break-glass removal of an orphan that carries this installation's tags: an instance by ID,
        then what its stack made beside it (a security group it still uses is left for a later
        cycle's discover_leftovers), or one such leftover."""
        installation = self._installation_id()
        if companions.kind_of(resource.resource_id) != "instance":
            companions.remove(self.clients, resource, installation, self._iam_region())
            return None
        location = resource.location or ""
        region = location[:-1] if location[-1:].isalpha() else location  # us-east-1b -> us-east-1
        state = readpath.terminate(self.clients, region, resource.resource_id, installation)
        if state not in ("shutting-down", "terminated"):
            raise OperationError(f"{resource.resource_id}: EC2 reports {state} after terminate")
        if not resource.machine_id:
            return None
        iam = self._iam_region() if self.aws.agent_metrics else None
        return companions.remove_companions(self.clients, region, resource.machine_id, installation, iam)

    def _iam_region(self) -> str:
        """IAM is global; its client takes a configured region (which picks the partition)."""
        regions = self.regions()
        return regions[0] if regions else "us-east-1"

    def pin_summary(self) -> tuple[bool, str]:
        return summary(images.load_pins(), images.LOCK_NAME)
