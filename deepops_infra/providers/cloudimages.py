"""The one reader of the cloud image locks (images/<cloud>.lock.yaml): per image, a login and an
immutable image reference per region. Each cloud's images module says what an immutable reference
is there (its `problem(ref)`) and how a region finds its pin; its provider is the one authority on
an image's pin (Provider.image_pin). On-prem pins are the image files' hashed package locks."""

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

LOCK_SUFFIX = ".lock.yaml"


@dataclass(frozen=True)
class Pins:
    image: str
    ssh_user: str
    python: str
    regions: dict[str, str] = field(default_factory=dict)
    source: str = ""  # what the pinned image is, in words (its name at the vendor)


def parse_lock(path: Path, problem: Callable[[str], str | None]) -> dict[str, Pins]:
    """`problem(ref)` says why a reference is not an immutable pin (None when it is)."""
    raw = load_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("images"), Mapping):
        raise FileError(path, 1, "an image lock needs `images:` mapping image names to pins")
    pins = {}
    images = raw["images"]
    for name, entry in images.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("regions"), Mapping):
            raise FileError(path, images.line_of(name), f"{name}: needs `regions:` mapping region -> image")
        regions = entry["regions"]
        for region, ref in regions.items():
            why = problem(ref) if isinstance(ref, str) else "is not a string"
            if why:
                raise FileError(path, regions.line_of(region), f"{name}.{region}: {ref!r} {why}")
        for key in ("ssh_user", "python", "source"):
            if key in entry and not isinstance(entry[key], str):
                raise FileError(path, entry.line_of(key), f"{name}.{key} must be a string")
        pins[str(name)] = Pins(
            image=str(name),
            ssh_user=entry.get("ssh_user", "ubuntu"),
            python=entry.get("python", "/usr/bin/python3"),
            regions={str(r): str(a) for r, a in regions.items()},
            source=entry.get("source", ""),
        )
    return pins


def problem_rule(cloud: str, path: Path) -> Callable[[str], str | None]:
    """The cloud's own rule for what a pin is (deepops_infra/providers/<cloud>/images.py: problem)."""
    module = None
    if re.fullmatch(r"[a-z0-9]+", cloud):
        try:
            module = importlib.import_module(f"deepops_infra.providers.{cloud}.images")
        except ModuleNotFoundError:
            module = None
    rule = getattr(module, "problem", None)
    if not callable(rule):
        raise FileError(path, 1, f"no provider reads {cloud} image pins; a lock is named <cloud>{LOCK_SUFFIX}")
    return rule


@cache
def load_lock(cloud: str, directory: Path | None = None) -> dict[str, Pins]:
    """images/<cloud>.lock.yaml, every reference checked by that cloud's rule; {} without a lock."""
    path = (directory or images_dir()) / f"{cloud}{LOCK_SUFFIX}"
    return parse_lock(path, problem_rule(cloud, path)) if path.exists() else {}


def region_pin(cloud: str, image: str, region: str) -> str | None:
    """The image's reference for `region` in the cloud's lock, as written there (None: no pin)."""
    entry = load_lock(cloud).get(image)
    return entry.regions.get(region) if entry else None


def lock_clouds(directory: Path | None = None) -> list[str]:
    """The clouds that have a lock file."""
    return sorted(p.name.removesuffix(LOCK_SUFFIX) for p in (directory or images_dir()).glob(f"*{LOCK_SUFFIX}"))


def image_pins(image: str, directory: Path | None = None) -> dict[str, dict[str, str]]:
    """The baked references of one image, per cloud and region (clouds without one left out)."""
    found = {cloud: load_lock(cloud, directory).get(image) for cloud in lock_clouds(directory)}
    return {cloud: dict(pins.regions) for cloud, pins in found.items() if pins and pins.regions}


def summary(pins: dict[str, Pins], lock: str) -> tuple[bool, str]:
    detail = "; ".join(f"{name}: {', '.join(sorted(p.regions))}" for name, p in sorted(pins.items()))
    return bool(pins), detail or f"images/{lock} has no pins"
