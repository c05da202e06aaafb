"""`--cloud auto`: every target the team's policy allows, the cheapest fitting offer first.

Each target plans with its own rules (on-prem: free pool GPUs; clouds: catalog placement with
image pins); the offers are merged by price. Once a machine is recorded, every call goes to the
provider of the cloud its plan landed on.
"""

from datetime import datetime
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Settings
from deepops_infra.errors import CapacityError, UserError
from deepops_infra.ledger.db import Ledger
from deepops_infra.progress import Progress
from deepops_infra.providers.base import Plan, Provider, Resource, Utilization

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.images import Image
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.request import MachineRequest


class AutoProvider(Provider):
    cloud = "auto"

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self._providers: dict[str, Provider] = {}
        self.skipped: list[str] = []

    def provider(self, cloud: str) -> Provider:
        from deepops_infra.providers import get_provider

        if cloud not in self._providers:
            self._providers[cloud] = get_provider(cloud, self.settings, self.ledger)
        return self._providers[cloud]

    def targets(self, request: "MachineRequest") -> list[str]:
        from deepops_infra.providers import PROVIDERS

        if request.host:
            return ["onprem"]
        allowed = self.settings.config.policy_for(request.team).targets
        return [cloud for cloud in allowed if cloud in PROVIDERS]

    def plan(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        plans: list[Plan] = []
        reasons: list[str] = []
        for cloud in self.targets(request):
            if cloud == "onprem" and request.spot:
                continue
            try:
                plans += self.provider(cloud).plan(request, image)
            except UserError as exc:
                reasons.append(f"{cloud}: {exc}")
        self.skipped = reasons
        if not plans:
            raise CapacityError(f"--cloud auto: no target can take {request.gpus}: " + " | ".join(reasons))
        plans.sort(key=lambda p: (p.price.per_hour, p.cloud, p.region or "", p.instance_type or p.host or ""))
        if reasons:
            plans[0] = Plan(**{**plans[0].__dict__, "details": {**plans[0].details, "targets_skipped": reasons}})
        return plans

    def preflight(self, plans: list[Plan]) -> None:
        first = plans[0].cloud
        self.provider(first).preflight([p for p in plans if p.cloud == first])

    def reserve(self, session: "Session", machine: "Machine", plans: list[Plan]) -> Plan:
        busy = []
        for plan in plans:
            try:
                return self.provider(plan.cloud).reserve(session, machine, [plan])
            except CapacityError as exc:
                busy.append(str(exc))
        raise CapacityError("; ".join(busy))

    def _of(self, machine: "Machine") -> Provider:
        return self.provider(machine.cloud)

    def release_reservation(self, session: "Session", machine: "Machine", at: datetime) -> None:
        self._of(machine).release_reservation(session, machine, at)

    def create(self, machine: "Machine", progress: Progress) -> dict[str, Any]:
        return self._of(machine).create(machine, progress)

    def configure(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        return self._of(machine).configure(machine, image, progress)

    def validate(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        return self._of(machine).validate(machine, image, progress)

    def destroy(self, machine: "Machine", progress: Progress) -> None:
        self._of(machine).destroy(machine, progress)

    def discover(self) -> list[Resource]:
        from deepops_infra.providers import PROVIDERS

        return [r for cloud in PROVIDERS for r in self.provider(cloud).discover()]

    def utilization(self, machine: "Machine") -> Utilization | None:
        return self._of(machine).utilization(machine)

    def shell_command(self, machine: "Machine", command: list[str] | None) -> list[str]:
        return self._of(machine).shell_command(machine, command)
