"""AMI pins per image and region (images/aws.lock.yaml), and their check against describe_images."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepops_infra.providers.cloudimages import Pins, load_lock, region_pin

CLOUD = "aws"
LOCK_NAME = "aws.lock.yaml"
AMI = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")


def problem(ref: str) -> str | None:
    return None if AMI.match(ref) else "is not an AMI ID (ami- and 8 or 17 hex digits)"


def load_pins(directory: Path | None = None) -> dict[str, Pins]:
    return load_lock(CLOUD, directory)


def pin_for(image: str, region: str) -> str | None:
    return region_pin(CLOUD, image, region)


@dataclass(frozen=True)
class PinCheck:
    image: str
    region: str
    ami: str
    ok: bool
    detail: str


def check_image(region: str, image: str, ami: str, found: dict[str, Any] | None, now: datetime) -> PinCheck:
    """Whether one describe_images answer makes the pin usable: exists, available, not deprecated."""
    if found is None:
        return PinCheck(image, region, ami, False, "not found (deregistered, or not shared with this account)")
    if found.get("State") != "available":
        return PinCheck(image, region, ami, False, f"state is {found.get('State')}")
    deprecation = found.get("DeprecationTime")
    if deprecation:
        when = datetime.fromisoformat(str(deprecation).replace("Z", "+00:00"))
        if when <= now:
            return PinCheck(image, region, ami, False, f"deprecated since {deprecation}")
    return PinCheck(image, region, ami, True, found.get("Name") or "available")


def verify(client_for: Any, pins: dict[str, Pins] | None = None) -> list[PinCheck]:
    """Every pin, one describe_images call per region (client_for(region) -> an EC2 client)."""
    pins = load_pins() if pins is None else pins
    by_region: dict[str, list[tuple[str, str]]] = {}
    for entry in pins.values():
        for region, ami in entry.regions.items():
            by_region.setdefault(region, []).append((entry.image, ami))
    now = datetime.now(UTC)
    results = []
    for region, wanted in sorted(by_region.items()):
        amis = sorted({ami for _, ami in wanted})
        ec2 = client_for(region)
        # Filtering by image-id (not ImageIds=) answers with what exists instead of failing on the first missing one.
        found: dict[str, Any] = {}
        paginator = ec2.get_paginator("describe_images")
        for page in paginator.paginate(Filters=[{"Name": "image-id", "Values": amis}], IncludeDeprecated=True):
            for img in page.get("Images", []):
                found[img["ImageId"]] = img
        results += [check_image(region, image, ami, found.get(ami), now) for image, ami in wanted]
    return results


def verify_cloud_pins(settings: Any, names: list[str]) -> list[PinCheck]:
    """`deepops images verify --cloud aws` (the hook deepops_infra.images looks up): the pins of
    these images, checked with describe_images through the configured endpoints."""
    from deepops_infra.errors import UserError
    from deepops_infra.providers.aws.clients import Clients
    from deepops_infra.providers.aws.settings import aws_settings

    clients = Clients(aws_settings(settings))
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    pins = {name: entry for name, entry in load_pins().items() if name in names}
    return verify(clients.ec2, pins)
