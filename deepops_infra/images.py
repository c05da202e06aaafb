"""Image definitions from images/: what a machine is configured with, pinned immutably."""

import hashlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from deepops_infra.errors import NotFoundError
from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError, Mapping, load_yaml


@dataclass(frozen=True)
class OnpremPin:
    lock_path: Path
    sha256: str
    python: str  # PEP 440 specifier the lock is made for

    @property
    def pin(self) -> str:
        """The immutable identity of the on-prem environment: the lock's hash."""
        return f"sha256:{self.sha256}"


@dataclass(frozen=True)
class Image:
    name: str
    description: str
    gpu_required: bool
    versions: dict[str, str] = field(default_factory=dict)
    onprem: OnpremPin | None = None
    source: Path | None = None

    def pin_for(self, cloud: str) -> str | None:
        if cloud == "onprem":
            return self.onprem.pin if self.onprem else None
        return None


def _load(path: Path) -> Image:
    raw = load_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise FileError(path, 1, "an image file needs at least `name:`")
    onprem = None
    if (op := raw.get("onprem")) is not None:
        if not isinstance(op, Mapping) or not op.get("lock") or not op.get("sha256"):
            raise FileError(path, raw.line_of("onprem"), "onprem needs `lock:` and `sha256:`")
        onprem = OnpremPin(
            lock_path=(path.parent / op["lock"]).resolve(), sha256=str(op["sha256"]), python=str(op.get("python", ""))
        )
    return Image(
        name=raw["name"],
        description=str(raw.get("description", "")),
        gpu_required=bool(raw.get("gpu_required", False)),
        versions={str(k): str(v) for k, v in (raw.get("versions") or {}).items()},
        onprem=onprem,
        source=path,
    )


@cache
def load_images(directory: Path | None = None) -> dict[str, Image]:
    directory = directory or images_dir()
    images = {}
    for path in sorted(directory.glob("*.yaml")):
        image = _load(path)
        images[image.name] = image
    return images


def get_image(name: str) -> Image:
    images = load_images()
    if name not in images:
        raise NotFoundError(
            f"unknown image {name!r}; available: {', '.join(sorted(images))} (see images/ or `deepops images ls`)"
        )
    return images[name]


def verify_onprem_lock(image: Image) -> str | None:
    """None when the lock file matches its pinned hash, else what is wrong."""
    if image.onprem is None:
        return "no on-prem pin"
    try:
        digest = hashlib.sha256(image.onprem.lock_path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"lock {image.onprem.lock_path} unreadable: {exc.strerror}"
    if digest != image.onprem.sha256:
        return f"lock {image.onprem.lock_path.name} has sha256 {digest}, the image pins {image.onprem.sha256}"
    return None
