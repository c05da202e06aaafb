"""The `azure:` section of config.yaml: the shared cloud keys (providers/cloudsettings.py) plus

```yaml
azure:
  subscription_id: 00000000-0000-0000-0000-000000000000   # required to create or discover
  authority_host: https://login.microsoftonline.us        # sovereign clouds (default: public Azure)
  endpoints: {resource_manager: https://management.usgovcloudapi.net, prices: https://prices.azure.com}
```
"""

from dataclasses import dataclass, field
from decimal import Decimal

from deepops_infra.config import Settings
from deepops_infra.errors import UserError
from deepops_infra.providers.cloudsettings import parse_section, text

SERVICES = ("resource_manager", "prices")
RESOURCE_MANAGER = "https://management.azure.com"


@dataclass(frozen=True)
class AzureSettings:
    subscription_id: str | None = None
    authority_host: str | None = None
    regions: tuple[str, ...] | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    ssh_cidr: str | None = None
    allow_any_ssh: bool = False
    ip_detect_url: str = "https://checkip.amazonaws.com"
    disk_gb_month: Decimal = Decimal("0.15")  # Premium SSD v1 P10 (128 GiB, $19.71/month) per GB
    ssh_user: str | None = None
    workspace_root: str | None = None
    management_endpoint: str | None = None  # read by `deepops cost reconcile` (costs/reconcile/azure.py)

    @property
    def resource_manager(self) -> str:
        return self.endpoints.get("resource_manager") or RESOURCE_MANAGER

    def require_subscription(self) -> str:
        if not self.subscription_id:
            raise UserError("azure.subscription_id is not set in config.yaml: name the subscription machines live in")
        return self.subscription_id


def azure_settings(settings: Settings) -> AzureSettings:
    values = parse_section(
        settings, "azure", SERVICES, {"subscription_id": text, "authority_host": text, "management_endpoint": text}
    )
    return AzureSettings(**values)
