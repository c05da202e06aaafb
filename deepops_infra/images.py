"""Image definitions from images/: what a machine is configured with, pinned immutably."""

import hashlib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

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
class GpuStack:
    """What the GPU roles install, each at an exact version (no ranges, no "latest")."""

    driver_branch: str  # NVIDIA driver branch, e.g. "580" (the package stream)
    driver_version: str  # the exact driver in that branch, e.g. "580.95.05"
    cuda: str  # CUDA toolkit, exact: "13.0.2"
    container_toolkit: str  # NVIDIA Container Toolkit, exact: "1.18.0"
    framework: dict[str, str] = field(default_factory=dict)  # pip package -> version, installed from the lock

    def role_vars(self) -> dict[str, Any]:
        """Extra variables for roles/playbooks/configure-gpu.yml (and the Packer templates)."""
        return {
            "nvidia_driver_branch": self.driver_branch,
            "nvidia_driver_version": self.driver_version,
            "cuda_toolkit_version": self.cuda,
            "container_toolkit_version": self.container_toolkit,
            "framework_expected": dict(self.framework),
        }


@dataclass(frozen=True)
class Image:
    name: str
    description: str
    gpu_required: bool
    versions: dict[str, str] = field(default_factory=dict)
    onprem: OnpremPin | None = None
    source: Path | None = None
    gpu: GpuStack | None = None
    bases: dict[str, dict[str, str]] = field(default_factory=dict)  # cloud -> region -> base image to bake from
    jupyter: bool = False  # the environment has jupyter-server: `deepops up --jupyter` may start one


EXACT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _exact(path: Path, section: Mapping, key: str, what: str) -> str:
    value = section.get(key)
    text = str(value) if value is not None else ""
    if not EXACT.match(text):
        raise FileError(path, section.line_of(key), f"{what} must be an exact version like 1.2.3, not {value!r}")
    return text


def _gpu_stack(path: Path, raw: Mapping) -> GpuStack | None:
    gpu = raw.get("gpu")
    if gpu is None:
        return None
    if not isinstance(gpu, Mapping) or not isinstance(gpu.get("driver"), Mapping):
        raise FileError(
            path, raw.line_of("gpu"), "gpu needs `driver: {branch, version}`, `cuda:` and `container_toolkit:`"
        )
    driver = gpu["driver"]
    branch = _exact(path, driver, "branch", "gpu.driver.branch")
    version = _exact(path, driver, "version", "gpu.driver.version")
    if not version.startswith(branch + "."):
        raise FileError(path, driver.line_of("version"), f"gpu.driver.version {version} is not in branch {branch}")
    framework = gpu.get("framework") or Mapping()
    if not isinstance(framework, Mapping):
        raise FileError(path, gpu.line_of("framework"), "gpu.framework maps pip packages to exact versions")
    return GpuStack(
        driver_branch=branch,
        driver_version=version,
        cuda=_exact(path, gpu, "cuda", "gpu.cuda"),
        container_toolkit=_exact(path, gpu, "container_toolkit", "gpu.container_toolkit"),
        framework={str(k): _exact(path, framework, k, f"gpu.framework.{k}") for k in framework},
    )


def _bases(path: Path, raw: Mapping) -> dict[str, dict[str, str]]:
    bases = raw.get("bases")
    if bases is None:
        return {}
    if not isinstance(bases, Mapping) or not all(isinstance(v, Mapping) for v in bases.values()):
        raise FileError(path, raw.line_of("bases"), "bases maps a cloud to `region: base image` entries")
    return {str(cloud): {str(r): str(i) for r, i in regions.items()} for cloud, regions in bases.items()}


def _check_types(path: Path, raw: Mapping) -> None:
    """Wrongly typed settings are errors naming their line (`gpu_required: "no"` is not false)."""
    if not isinstance(raw.get("description", ""), str):
        raise FileError(path, raw.line_of("description"), "description must be a string")
    if not isinstance(raw.get("gpu_required", False), bool):
        raise FileError(path, raw.line_of("gpu_required"), "gpu_required must be true or false")
    if not isinstance(raw.get("jupyter", False), bool):
        raise FileError(path, raw.line_of("jupyter"), "jupyter must be true or false (has the lock jupyter-server)")
    versions = raw.get("versions")
    if versions is not None and (
        not isinstance(versions, Mapping) or not all(isinstance(v, str | int | float) for v in versions.values())
    ):
        raise FileError(path, raw.line_of("versions"), 'versions maps names to versions, e.g. torch: "2.13.0"')


def _load(path: Path) -> Image:
    raw = load_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise FileError(path, 1, "an image file needs at least `name:`")
    _check_types(path, raw)
    onprem = None
    if (op := raw.get("onprem")) is not None:
        if not isinstance(op, Mapping) or not op.get("lock") or not op.get("sha256"):
            raise FileError(path, raw.line_of("onprem"), "onprem needs `lock:` and `sha256:`")
        if not isinstance(op["lock"], str):
            raise FileError(path, op.line_of("lock"), "onprem.lock must be a path to the lock file")
        if not isinstance(op["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", op["sha256"]):
            raise FileError(path, op.line_of("sha256"), "onprem.sha256 must be the lock's sha256, 64 hex digits")
        onprem = OnpremPin(
            lock_path=(path.parent / op["lock"]).resolve(), sha256=str(op["sha256"]), python=str(op.get("python", ""))
        )
    return Image(
        name=raw["name"],
        description=str(raw.get("description", "")),
        gpu_required=raw.get("gpu_required", False),
        versions={str(k): str(v) for k, v in (raw.get("versions") or {}).items()},
        onprem=onprem,
        source=path,
        gpu=_gpu_stack(path, raw),
        bases=_bases(path, raw),
        jupyter=raw.get("jupyter", False),
    )


@cache
def load_images(directory: Path | None = None) -> dict[str, Image]:
    directory = directory or images_dir()
    images = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name.endswith(".lock.yaml"):
            continue  # a cloud's pins (aws.lock.yaml, ...), read by that cloud's provider
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


# Cloud pins (the baked image IDs per region) are each cloud provider's to read and check, in
# deepops_infra/providers/<cloud>/images.py. `deepops images verify --cloud CLOUD` calls that
# module's hook by this name, when there is one:
#     verify_cloud_pins(settings, images: list[str]) -> list of results
# each result a mapping or an object with `image`, `region`, `ami` or `pin`, `ok` and `detail`.
CLOUD_PIN_HOOK = "verify_cloud_pins"


def cloud_pin_verifier(cloud: str) -> Callable[..., Any] | None:
    """The provider's hook that checks its cloud pins against the cloud, or None where it has none yet."""
    if not re.fullmatch(r"[a-z0-9]+", cloud):
        return None
    try:
        module = importlib.import_module(f"deepops_infra.providers.{cloud}.images")
    except ModuleNotFoundError:
        return None
    hook = getattr(module, CLOUD_PIN_HOOK, None)
    return hook if callable(hook) else None


def cloud_lock_pins(name: str, directory: Path | None = None) -> dict[str, dict[str, str]]:
    """The baked image IDs of one image, per cloud and region (empty where none was baked), read
    by the one lock reader (providers/cloudimages.py) with each cloud's own rule."""
    from deepops_infra.providers.cloudimages import image_pins

    return image_pins(name, directory)


def check_cloud_locks(directory: Path | None = None) -> None:
    """Read every cloud lock, offline: a FileError (exit 2) for a pin that is not immutable or whose
    recorded driver/CUDA contradicts its image definition."""
    from deepops_infra.providers.cloudimages import load_lock, lock_clouds

    for cloud in lock_clouds(directory):
        load_lock(cloud, directory)
