"""GCP image pins (images/gcp.lock.yaml): full image self-links, never a family; checked with images.get."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepops_infra.providers.cloudimages import Pins, load_lock, region_pin

CLOUD = "gcp"
LOCK_NAME = "gcp.lock.yaml"
API = "https://www.googleapis.com/compute/v1/"
GLOBAL = "global"  # GCP images are global: one pin under `global:` serves every region
SELF_LINK = re.compile(
    r"^(https://(www|compute)\.googleapis\.com/compute/v1/)?projects/(?P<project>[a-z][a-z0-9-]{4,28}[a-z0-9])"
    r"/global/images/(?P<image>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)$"
)


def problem(ref: str) -> str | None:
    if "/family/" in ref:
        return "names an image family, which moves; pin the image itself"
    if not SELF_LINK.match(ref):
        return "is not an image (projects/P/global/images/NAME or its https://www.googleapis.com/compute/v1/ self-link)"
    return None


def self_link(ref: str) -> str:
    """The full self-link of a pinned image (the lock may hold it as `projects/P/global/images/N`,
    as images/packer/bake.py records it)."""
    return ref if ref.startswith("https://") else API + ref


def load_pins(directory: Path | None = None) -> dict[str, Pins]:
    return load_lock(CLOUD, directory)


def pin_for(image: str, region: str) -> str | None:
    ref = region_pin(CLOUD, image, region) or region_pin(CLOUD, image, GLOBAL)
    return self_link(ref) if ref else None


@dataclass(frozen=True)
class PinCheck:
    image: str
    region: str
    pin: str
    ok: bool
    detail: str


def check(image: str, region: str, link: str, found: Any) -> PinCheck:
    """Usable: exists, READY, not deprecated/obsolete/deleted."""
    if found is None:
        return PinCheck(image, region, link, False, "not found (deleted, or not readable by this account)")
    if found.status != "READY":
        return PinCheck(image, region, link, False, f"status is {found.status}")
    state = found.deprecated.state if found.deprecated else ""
    if state in ("DEPRECATED", "OBSOLETE", "DELETED"):
        return PinCheck(
            image, region, link, False, f"{state.lower()} (replacement: {found.deprecated.replacement or '-'})"
        )
    return PinCheck(image, region, link, True, found.name)


def verify(clients: Any, pins: dict[str, Pins]) -> list[PinCheck]:
    """One images.get per distinct self-link."""
    from google.api_core.exceptions import NotFound

    seen: dict[str, Any] = {}
    results = []
    for entry in pins.values():
        for region, link in sorted(entry.regions.items()):
            if link not in seen:
                m = SELF_LINK.match(link)
                assert m is not None  # checked when the lock was read
                try:
                    seen[link] = clients.images().get(project=m["project"], image=m["image"])
                except NotFound:
                    seen[link] = None
            results.append(check(entry.image, region, link, seen[link]))
    return results


def verify_cloud_pins(settings: Any, names: list[str]) -> list[PinCheck]:
    """`deepops images verify --cloud gcp`: the pins of these images, through the configured endpoint."""
    from deepops_infra.errors import UserError
    from deepops_infra.providers.gcp.clients import Clients
    from deepops_infra.providers.gcp.settings import gcp_settings

    clients = Clients(gcp_settings(settings))
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    return verify(clients, {n: p for n, p in load_pins().items() if n in names})
