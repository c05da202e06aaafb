"""The keys every cloud section of config.yaml shares (SSH source, login, workspace, regions, disk
price, endpoint overrides), checked with the file and line of a bad value. A cloud adds its own keys.

```yaml
gcp:                                    # or azure:
  regions: [us-central1]                # regions placement and discovery use (default: every catalog region)
  endpoints: {compute: https://...}     # per service: private endpoints, sovereign clouds, tests
  ssh_cidr: 203.0.113.0/24              # who may SSH in (default: this machine's public address /32)
  allow_any_ssh: false                  # required to accept 0.0.0.0/0 above
  ip_detect_url: https://checkip.amazonaws.com
  disk_gb_month: 0.10                   # USD per GB-month of the boot disk, priced into the machine
  ssh_user: ubuntu                      # login on the machine (default: the image lock's)
  workspace_root: /opt/deepops          # where leases live on the machine
```
"""

import ipaddress
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from deepops_infra.config import Settings
from deepops_infra.yamlfile import FileError, Mapping

COMMON = ("regions", "endpoints", "ssh_cidr", "allow_any_ssh", "ip_detect_url", "disk_gb_month", "ssh_user")
COMMON += ("workspace_root",)

Check = Callable[[Any], Any]  # returns the parsed value or raises ValueError(message)


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def parse_section(
    settings: Settings, name: str, services: tuple[str, ...], extra: dict[str, Check] | None = None
) -> dict[str, Any]:
    """The section's values by key (only the keys set); FileError at the line of a bad one."""
    extra = extra or {}
    section = settings.config.section(name)
    path = settings.config.path or Path(settings.config_path)
    known = (*COMMON, *extra)

    def regions(value: Any) -> tuple[str, ...]:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError("a list of region names, e.g. [us-central1]")
        return tuple(value)

    def endpoints(value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping) or not all(
            k in services and isinstance(v, str) and v.startswith(("http://", "https://")) for k, v in value.items()
        ):
            raise ValueError(f"a mapping of service -> http(s) URL; services: {', '.join(services)}")
        return {str(k): str(v).rstrip("/") for k, v in value.items()}

    def cidr(value: Any) -> str:
        try:
            return str(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR like 203.0.113.7/32") from None

    def price(value: Any) -> Decimal:
        try:
            result = Decimal(str(value))
        except InvalidOperation:
            raise ValueError("a price in USD per GB-month, e.g. 0.10") from None
        if not result.is_finite() or result < 0:
            raise ValueError("a price in USD per GB-month, e.g. 0.10")
        return result

    checks: dict[str, Check] = {
        "regions": regions,
        "endpoints": endpoints,
        "ssh_cidr": cidr,
        "allow_any_ssh": boolean,
        "disk_gb_month": price,
        **extra,
    }
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise FileError(path, section.line_of(key), f"{name}.{key}: unknown setting; known: {', '.join(known)}")
        try:
            values[key] = checks.get(key, text)(value)
        except ValueError as exc:
            raise FileError(path, section.line_of(key), f"{name}.{key}: {exc}") from None
    cidr_value = values.get("ssh_cidr")
    if cidr_value and ipaddress.ip_network(cidr_value).prefixlen == 0 and not values.get("allow_any_ssh"):
        raise FileError(
            path,
            section.line_of("ssh_cidr"),
            f"{name}.ssh_cidr: {cidr_value} opens SSH to everyone; set {name}.allow_any_ssh: true to mean it",
        )
    return values
