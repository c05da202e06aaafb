"""The `server:` section of config.yaml: limits and token lifetimes of `deepops serve`.

server:
  rate_per_second: 20      # requests per second per caller (token, or address when anonymous)
  burst: 60                # requests a caller may send at once before the rate applies
  max_body_bytes: 65536    # larger request bodies are refused with 413
  token_ttl: 90d           # default lifetime of a new API token
  reaper_interval: 1m      # between the cycles of the reaper loop in the server process
  list_cache_seconds: 1    # GET /machines answers are reused this long per scope (0: never);
                           # any change made through this server drops them at once
  trusted_proxies: []      # addresses or CIDRs of the proxies in front (nginx on 127.0.0.1: [127.0.0.1]);
                           # X-Forwarded-For is believed from these only (see server.edge)
"""

from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from deepops_infra.config import Settings
from deepops_infra.durations import parse_duration
from deepops_infra.server.oidc import OidcSettings
from deepops_infra.yamlfile import FileError


@dataclass(frozen=True)
class ServerSettings:
    rate_per_second: float = 20.0
    burst: int = 60
    max_body_bytes: int = 64 * 1024
    token_ttl: timedelta = timedelta(days=90)
    reaper_interval: timedelta = timedelta(minutes=1)
    list_cache_seconds: float = 1.0
    oidc: OidcSettings | None = None
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def load(cls, settings: Settings) -> "ServerSettings":
        config = settings.config
        raw = config.section("server")
        path = config.path
        values: dict[str, object] = {}
        for key, value in raw.items():
            line = raw.line_of(key)
            if key in ("rate_per_second",):
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise FileError(path, line, f"server.{key} must be a number > 0")
                values[key] = float(value)
            elif key == "list_cache_seconds":
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
                    raise FileError(path, line, f"server.{key} must be a number of seconds from 0 to 60")
                values[key] = float(value)
            elif key in ("burst", "max_body_bytes"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise FileError(path, line, f"server.{key} must be a whole number >= 1")
                values[key] = value
            elif key == "oidc":
                values[key] = OidcSettings.parse(value, path, line)
            elif key == "trusted_proxies":
                values[key] = _networks(value, path, line)
            elif key in ("token_ttl", "reaper_interval"):
                try:
                    values[key] = parse_duration(str(value), f"server.{key}")
                except Exception as exc:
                    raise FileError(path, line, str(exc)) from None
            else:
                known = ", ".join(cls.__dataclass_fields__)
                raise FileError(path, line, f"unknown server setting {key!r}; known: {known}")
        return cls(**values)  # type: ignore[arg-type]


def _networks(value: Any, path: Path | None, line: int) -> tuple[IPv4Network | IPv6Network, ...]:
    """server.trusted_proxies: a list of addresses (a /32 or /128) or CIDRs."""
    if not isinstance(value, list):
        raise FileError(path, line, "server.trusted_proxies must be a list of addresses or CIDRs, e.g. [127.0.0.1]")
    networks = []
    lines = getattr(value, "item_lines", [])
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):
                raise ValueError
            networks.append(ip_network(item.strip(), strict=False))
        except ValueError:
            where = lines[i] if i < len(lines) and lines[i] else line
            raise FileError(path, where, f"server.trusted_proxies: {item!r} is not an address or a CIDR") from None
    return tuple(networks)
