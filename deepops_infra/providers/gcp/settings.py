"""The `gcp:` section of config.yaml: the shared cloud keys (providers/cloudsettings.py) plus

```yaml
gcp:
  project: my-gpu-project            # the project machines live in (required to create or discover)
  zones: {us-central1: us-central1-c}  # the zone per region (default: <region>-a)
  network: default                   # the VPC network of the firewall rule and the NIC
  endpoints: {compute: https://compute.googleapis.com, monitoring: ..., billing: ...}
```
"""

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from deepops_infra.config import Settings
from deepops_infra.errors import UserError
from deepops_infra.providers.cloudsettings import parse_section, text
from deepops_infra.yamlfile import Mapping

SERVICES = ("compute", "monitoring", "billing")


def _zones(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(z, str) and z.startswith(f"{r}-") for r, z in value.items()
    ):
        raise ValueError("a mapping of region -> zone in it, e.g. {us-central1: us-central1-c}")
    return {str(r): str(z) for r, z in value.items()}


@dataclass(frozen=True)
class GcpSettings:
    project: str | None = None
    regions: tuple[str, ...] | None = None
    zones: dict[str, str] = field(default_factory=dict)
    network: str = "default"
    endpoints: dict[str, str] = field(default_factory=dict)
    ssh_cidr: str | None = None
    allow_any_ssh: bool = False
    ip_detect_url: str = "https://checkip.amazonaws.com"
    disk_gb_month: Decimal = Decimal("0.10")  # pd-balanced, us-central1
    ssh_user: str | None = None
    workspace_root: str | None = None
    # Read by `deepops cost reconcile` (costs/reconcile/gcp.py): the billing export and its query job.
    billing_export_table: str | None = None
    billing_project: str | None = None
    bigquery_endpoint: str | None = None

    def endpoint(self, service: str) -> str | None:
        return self.endpoints.get(service)

    def zone(self, region: str) -> str:
        return self.zones.get(region) or f"{region}-a"

    def require_project(self) -> str:
        if not self.project:
            raise UserError("gcp.project is not set in config.yaml: name the project GCP machines live in")
        return self.project


def gcp_settings(settings: Settings) -> GcpSettings:
    reconcile = {key: text for key in ("billing_export_table", "billing_project", "bigquery_endpoint")}
    values = parse_section(settings, "gcp", SERVICES, {"project": text, "zones": _zones, "network": text, **reconcile})
    return GcpSettings(**values)
