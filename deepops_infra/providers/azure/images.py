"""Azure image pins (images/azure.lock.yaml): a marketplace URN with an explicit version
(`publisher:offer:sku:version`, never `latest`) or a gallery image version ID; checked against ARM."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepops_infra.providers.cloudimages import Pins, load_lock, region_pin

CLOUD = "azure"
LOCK_NAME = "azure.lock.yaml"
URN = re.compile(r"^(?P<publisher>[\w.-]+):(?P<offer>[\w.-]+):(?P<sku>[\w.-]+):(?P<version>[0-9]+(\.[0-9]+){2})$")
GALLERY = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/Microsoft\.Compute/galleries/"
    r"(?P<gallery>[^/]+)/images/(?P<image>[^/]+)/versions/(?P<version>[0-9]+(\.[0-9]+){2})$",
    re.IGNORECASE,
)


def problem(ref: str) -> str | None:
    if ref.lower().endswith(("latest", ":latest")):
        return "uses `latest`, which moves; pin an explicit version"
    if URN.match(ref) or GALLERY.match(ref):
        return None
    return "is neither publisher:offer:sku:version nor a gallery image version ID"


def image_reference(ref: str) -> dict[str, str]:
    """The VM's imageReference for a pin (the stack's input)."""
    if m := URN.match(ref):
        return {k: m[k] for k in ("publisher", "offer", "sku", "version")}
    return {"id": ref}


def load_pins(directory: Path | None = None) -> dict[str, Pins]:
    return load_lock(CLOUD, directory)


def pin_for(image: str, region: str) -> str | None:
    return region_pin(CLOUD, image, region)


@dataclass(frozen=True)
class PinCheck:
    image: str
    region: str
    pin: str
    ok: bool
    detail: str


def check_one(compute: Any, region: str, ref: str) -> tuple[bool, str]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        if m := URN.match(ref):
            found = compute.virtual_machine_images.get(region, m["publisher"], m["offer"], m["sku"], m["version"])
            status = getattr(found.properties, "image_deprecation_status", None)
            state = str(getattr(status, "image_state", None) or "Active")
            if state.endswith("Deprecated") or state == "Deprecated":
                return False, "deprecated by its publisher"
            return True, f"version {found.name or m['version']} ({state.rsplit('.', 1)[-1]})"
        g = GALLERY.match(ref)
        assert g is not None  # checked when the lock was read
        version = compute.gallery_image_versions.get(g["group"], g["gallery"], g["image"], g["version"])
    except ResourceNotFoundError:
        return False, f"not found in {region}"
    props = version.properties
    state = str(props.provisioning_state) if props and props.provisioning_state else "unknown"
    if not state.endswith("Succeeded") and state != "Succeeded":
        return False, f"provisioning state {state}"
    regions = [r.name.replace(" ", "").lower() for r in (props.publishing_profile.target_regions or [])]
    if regions and region.lower() not in regions:
        return False, f"not replicated to {region} (regions: {', '.join(regions)})"
    return True, f"version {g['version']}"


def verify(compute: Any, pins: dict[str, Pins]) -> list[PinCheck]:
    results = []
    for entry in pins.values():
        for region, ref in sorted(entry.regions.items()):
            ok, detail = check_one(compute, region, ref)
            results.append(PinCheck(entry.image, region, ref, ok, detail))
    return results


def verify_cloud_pins(settings: Any, names: list[str]) -> list[PinCheck]:
    """`deepops images verify --cloud azure`: the pins of these images, through the configured endpoint."""
    from deepops_infra.errors import UserError
    from deepops_infra.providers.azure.clients import Clients
    from deepops_infra.providers.azure.settings import azure_settings

    clients = Clients(azure_settings(settings))
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    return verify(clients.compute(), {n: p for n, p in load_pins().items() if n in names})
