"""Image pins of the GCP and Azure lock files (images/<cloud>.lock.yaml): per image, a login and an
immutable image reference per region. Each cloud says what an immutable reference is."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepops_infra.yamlfile import FileError, Mapping, load_yaml


@dataclass(frozen=True)
class Pins:
    image: str
    ssh_user: str
    python: str
    regions: dict[str, str] = field(default_factory=dict)
    source: str = ""


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
            why = problem(ref) if isinstance(ref, str) else "not a string"
            if why:
                raise FileError(path, regions.line_of(region), f"{name}.{region}: {ref!r} {why}")
        pins[str(name)] = Pins(
            image=str(name),
            ssh_user=str(entry.get("ssh_user", "ubuntu")),
            python=str(entry.get("python", "/usr/bin/python3")),
            regions={str(r): str(a) for r, a in regions.items()},
            source=str(entry.get("source", "")),
        )
    return pins


def summary(pins: dict[str, Pins], lock: str) -> tuple[bool, str]:
    detail = "; ".join(f"{name}: {', '.join(sorted(p.regions))}" for name, p in sorted(pins.items()))
    return bool(pins), detail or f"images/{lock} has no pins"
