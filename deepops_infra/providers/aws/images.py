"""AMI pins per image and region (images/aws.lock.yaml), and their check against describe_images."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

LOCK_NAME = "aws.lock.yaml"


@dataclass(frozen=True)
class AmiPins:
    image: str
    ssh_user: str
    python: str
    regions: dict[str, str] = field(default_factory=dict)
    ami_name: str = ""


def _is_ami(value: object) -> bool:
    return isinstance(value, str) and value.startswith("ami-") and len(value) in (12, 21)


def parse_lock(path: Path) -> dict[str, AmiPins]:
    raw = load_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("images"), Mapping):
        raise FileError(path, 1, "the AWS image lock needs `images:` mapping image names to pins")
    pins = {}
    images = raw["images"]
    for name, entry in images.items():
        line = images.line_of(name)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("regions"), Mapping):
            raise FileError(path, line, f"{name}: needs `regions:` mapping region -> AMI ID")
        regions = entry["regions"]
        for region, ami in regions.items():
            if not _is_ami(ami):
                raise FileError(
                    path, regions.line_of(region), f"{name}.{region}: {ami!r} is not an AMI ID (ami- and 8 or 17 hex)"
                )
        pins[str(name)] = AmiPins(
            image=str(name),
            ssh_user=str(entry.get("ssh_user", "ubuntu")),
            python=str(entry.get("python", "/usr/bin/python3")),
            regions={str(r): str(a) for r, a in regions.items()},
            ami_name=str(entry.get("ami_name", "")),
        )
    return pins


@cache
def load_pins(directory: Path | None = None) -> dict[str, AmiPins]:
    path = (directory or images_dir()) / LOCK_NAME
    return parse_lock(path) if path.exists() else {}


def pin_for(image: str, region: str) -> str | None:
    entry = load_pins().get(image)
    return entry.regions.get(region) if entry else None


def pins_of(image: str) -> AmiPins | None:
    return load_pins().get(image)


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


def verify(client_for: Any, pins: dict[str, AmiPins] | None = None) -> list[PinCheck]:
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
