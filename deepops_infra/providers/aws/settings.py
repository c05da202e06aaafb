"""The `aws:` section of config.yaml, checked with the file and line of a bad value.

```yaml
aws:
  regions: [us-east-1, us-west-2]     # regions placement and discovery use (default: every catalog region)
  profile: deepops                     # a profile of ~/.aws (default: the usual credential chain)
  endpoint_url: http://127.0.0.1:5000  # every client (private endpoints, sovereign clouds, tests)
  endpoints: {pricing: https://...}    # per service, wins over endpoint_url
  ssh_cidr: 203.0.113.0/24             # who may SSH in (default: this machine's public address /32)
  allow_any_ssh: false                 # required to accept 0.0.0.0/0 above
  ip_detect_url: https://checkip.amazonaws.com
  gp3_gb_month: 0.08                   # USD per GB-month of the root volume, priced into the machine
  ssh_user: ubuntu                     # login on the machine (default: the AMI's, from images/aws.lock.yaml)
  workspace_root: /opt/deepops         # where leases live on the machine (default: ~<ssh_user>/deepops)
  agent_metrics: true                  # false: no IAM role for the agent's CloudWatch metrics (read as active)
  read_timeout: 60                     # seconds an API answer may take (slow private endpoints: raise it)
```
"""

import ipaddress
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from deepops_infra.config import Settings
from deepops_infra.yamlfile import FileError, Mapping

KNOWN = (
    "ssh_user",
    "workspace_root",
    "regions",
    "profile",
    "endpoint_url",
    "endpoints",
    "ssh_cidr",
    "allow_any_ssh",
    "ip_detect_url",
    "gp3_gb_month",
    "agent_metrics",
    "read_timeout",
)
SERVICES = ("ec2", "cloudwatch", "pricing", "sts", "ce")  # ce: Cost Explorer, for `deepops cost reconcile`


@dataclass(frozen=True)
class AwsSettings:
    regions: tuple[str, ...] | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    ssh_cidr: str | None = None
    allow_any_ssh: bool = False
    ip_detect_url: str = "https://checkip.amazonaws.com"
    gp3_gb_month: Decimal = Decimal("0.08")
    ssh_user: str | None = None
    workspace_root: str | None = None
    agent_metrics: bool = True
    read_timeout: int = 60

    def endpoint(self, service: str) -> str | None:
        return self.endpoints.get(service) or self.endpoint_url


def aws_settings(settings: Settings) -> AwsSettings:
    section = settings.config.section("aws")
    path = settings.config.path or Path(settings.config_path)

    def bad(key: str, message: str) -> FileError:
        return FileError(path, section.line_of(key), f"aws.{key}: {message}")

    values: dict[str, object] = {}
    for key, value in section.items():
        if key not in KNOWN:
            raise bad(key, f"unknown setting; known: {', '.join(KNOWN)}")
        if key == "regions":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise bad(key, "a list of region names, e.g. [us-east-1]")
            values[key] = tuple(value)
        elif key == "endpoints":
            if not isinstance(value, Mapping) or not all(
                k in SERVICES and isinstance(v, str) for k, v in value.items()
            ):
                raise bad(key, f"a mapping of service -> URL; services: {', '.join(SERVICES)}")
            values[key] = dict(value)
        elif key == "ssh_cidr":
            try:
                values[key] = str(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                raise bad(key, f"{value!r} is not a CIDR like 203.0.113.7/32") from None
        elif key in ("allow_any_ssh", "agent_metrics"):
            if not isinstance(value, bool):
                raise bad(key, "true or false")
            values[key] = value
        elif key == "read_timeout":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
                raise bad(key, "whole seconds from 1 to 3600, e.g. 60")
            values[key] = value
        elif key == "gp3_gb_month":
            try:
                price = Decimal(str(value))
            except InvalidOperation:
                price = Decimal("NaN")
            if isinstance(value, bool) or not price.is_finite() or price <= 0:
                raise bad(key, "a finite positive price in USD per GB-month, e.g. 0.08")
            values[key] = price
        else:
            if not isinstance(value, str) or not value:
                raise bad(key, "a non-empty string")
            values[key] = value
    result = AwsSettings(**values)  # type: ignore[arg-type]
    if result.ssh_cidr and ipaddress.ip_network(result.ssh_cidr).prefixlen == 0 and not result.allow_any_ssh:
        raise bad("ssh_cidr", f"{result.ssh_cidr} opens SSH to everyone; set aws.allow_any_ssh: true to mean it")
    return result
