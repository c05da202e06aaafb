"""The one reader of the cloud image locks (images/<cloud>.lock.yaml): per image, a login and an
immutable image reference per region. Each cloud's images module says what an immutable reference
is there (its `problem(ref)`) and how a region finds its pin; its provider is the one authority on
an image's pin (Provider.image_pin). On-prem pins are the image files' hashed package locks.

Each entry records the NVIDIA driver and CUDA its pinned image has (`driver:`, `cuda:`); a lock
whose recorded versions contradict the image definition's `gpu:` is refused when it is read. An
image with no matching pin on a cloud says so with `unavailable: <why>` and has no regions there."""

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

if TYPE_CHECKING:
    from deepops_infra.images import Image

LOCK_SUFFIX = ".lock.yaml"
STRINGS = ("ssh_user", "python", "source", "driver", "cuda", "unavailable")


@dataclass(frozen=True)
class Pins:
    image: str
    ssh_user: str
    python: str
    regions: dict[str, str] = field(default_factory=dict)
    source: str = ""  # what the pinned image is, in words (its name at the vendor)
    driver: str = ""  # NVIDIA driver of the pinned image: a branch ("570") or an exact version
    cuda: str = ""  # CUDA of the pinned image: "12.4" or exact "13.0.2"
    unavailable: str = ""  # why the image has no pin on this cloud yet (then `regions` is empty)


def agrees(recorded: str, declared: str) -> bool:
    """Whether versions agree on the components both give ("13.0" agrees with "13.0.2", "12.4" does not)."""
    a, b = recorded.split("."), declared.split(".")
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def contradiction(pins: Pins, image: "Image | None") -> str | None:
    """Why the recorded driver/CUDA of a pin contradicts what the image declares (None: they agree)."""
    if image is None or image.gpu is None or pins.unavailable:
        return None
    gpu = image.gpu
    if not pins.driver or not pins.cuda:
        return (
            f"{pins.image}: record the pinned image's `driver:` and `cuda:` (the image declares driver "
            f"{gpu.driver_version}, CUDA {gpu.cuda}), or mark it `unavailable:` on this cloud"
        )
    cuda = [v for v in (gpu.cuda, image.versions.get("cuda", "")) if v]
    if agrees(pins.driver, gpu.driver_version) and all(agrees(pins.cuda, v) for v in cuda):
        return None
    return (
        f"{pins.image}: the pinned image has driver {pins.driver}, CUDA {pins.cuda}; the image declares driver "
        f"{gpu.driver_version}, CUDA {gpu.cuda}: bake a matching image (images/packer) or mark it `unavailable:`"
    )


def parse_lock(
    path: Path, problem: Callable[[str], str | None], images: "dict[str, Image] | None" = None
) -> dict[str, Pins]:
    """`problem(ref)` says why a reference is not an immutable pin (None when it is); with `images`,
    an entry whose recorded driver/CUDA contradicts its image definition is refused too."""
    raw = load_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("images"), Mapping):
        raise FileError(path, 1, "an image lock needs `images:` mapping image names to pins")
    return {str(name): _entry(path, raw["images"], name, problem, images or {}) for name in raw["images"]}


def _entry(
    path: Path, images_map: Mapping, name: object, problem: Callable[[str], str | None], images: "dict[str, Image]"
) -> Pins:
    entry = images_map[name]
    if not isinstance(entry, Mapping):
        raise FileError(path, images_map.line_of(name), f"{name}: needs `regions:` mapping region -> image")
    for key in STRINGS:
        if key in entry and not isinstance(entry[key], str):
            raise FileError(path, entry.line_of(key), f"{name}.{key} must be a string")
    regions = entry.get("regions")
    if entry.get("unavailable"):
        if regions:
            raise FileError(path, entry.line_of("regions"), f"{name}: `unavailable:` and `regions:` exclude each other")
        regions = Mapping()
    elif not isinstance(regions, Mapping):
        raise FileError(
            path, images_map.line_of(name), f"{name}: needs `regions:` mapping region -> image (or `unavailable: why`)"
        )
    for region, ref in regions.items():
        why = problem(ref) if isinstance(ref, str) else "is not a string"
        if why:
            raise FileError(path, regions.line_of(region), f"{name}.{region}: {ref!r} {why}")
    pins = Pins(
        image=str(name),
        ssh_user=entry.get("ssh_user", "ubuntu"),
        python=entry.get("python", "/usr/bin/python3"),
        regions={str(r): str(a) for r, a in regions.items()},
        source=entry.get("source", ""),
        driver=entry.get("driver", ""),
        cuda=entry.get("cuda", ""),
        unavailable=entry.get("unavailable", ""),
    )
    why = contradiction(pins, images.get(str(name)))
    if why:
        raise FileError(path, images_map.line_of(name), why)
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
    from deepops_infra.images import load_images

    path = (directory or images_dir()) / f"{cloud}{LOCK_SUFFIX}"
    if not path.exists():
        return {}
    return parse_lock(path, problem_rule(cloud, path), load_images(directory))


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
    detail = "; ".join(
        f"{name}: {', '.join(sorted(p.regions)) if p.regions else 'unavailable'}" for name, p in sorted(pins.items())
    )
    return any(p.regions for p in pins.values()), detail or f"images/{lock} has no pins"
