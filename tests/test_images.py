"""The shipped images: they load, their locks match their pins, and every locked package is hashed."""

import re
import shutil
from pathlib import Path

import pytest

from deepops_infra.errors import NotFoundError
from deepops_infra.images import get_image, load_images, verify_onprem_lock
from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError

SHIPPED = load_images()


def requirements(lock: Path) -> list[str]:
    """The lock's requirement lines, with `\\`-continued lines joined, comments and blanks left out."""
    logical = lock.read_text().replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in logical if line.strip() and not line.lstrip().startswith("#")]


def test_shipped_images_load():
    assert set(SHIPPED) == {"cpu-jupyter", "cpu-minimal", "pytorch"}
    cpu = SHIPPED["cpu-minimal"]
    assert cpu.gpu_required is False
    assert cpu.versions == {"packaging": "24.2"}
    assert cpu.onprem is not None
    assert cpu.onprem.python == ">=3.8"
    assert cpu.onprem.lock_path == (images_dir() / "locks" / "cpu-minimal.txt").resolve()
    assert cpu.source == images_dir() / "cpu-minimal.yaml"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_lock_matches_pinned_sha256(name):
    image = SHIPPED[name]
    assert verify_onprem_lock(image) is None
    assert re.fullmatch(r"[0-9a-f]{64}", image.onprem.sha256)
    assert provider("onprem").image_pin(image, None) == f"sha256:{image.onprem.sha256}"


def provider(cloud: str):  # type: ignore[no-untyped-def]
    from deepops_infra.config import Settings
    from deepops_infra.providers import get_provider

    return get_provider(cloud, Settings(home=Path("/nonexistent")), None)  # pins need no ledger


@pytest.mark.parametrize(
    ("cloud", "region", "pin"),
    [
        ("aws", "us-west-2", "ami-0d2e6a7ac9b1f3c55"),
        ("aws", "ap-south-1", None),  # cpu-minimal is not baked there
        ("aws", None, None),
        (
            "gcp",
            "europe-west4",
            "https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release"
            "/global/images/common-cu124-v20250325-ubuntu-2204-py310",
        ),  # the global pin, as a self-link
        ("azure", "eastus", "microsoft-dsvm:ubuntu-hpc:2204:22.04.2025052101"),
        ("azure", "northeurope", None),
    ],
)
def test_each_provider_is_the_authority_on_its_pins(cloud, region, pin):
    """One lock reader, each cloud's own rule: what placement plans with is what `--like` checks."""
    from deepops_infra.images import cloud_lock_pins

    image = SHIPPED["cpu-minimal"]  # pytorch: no cloud pin until one is baked (test_image_pins.py)
    assert provider(cloud).image_pin(image, region) == pin
    assert provider(cloud).pin_for("cpu-minimal", region or "") == pin
    if pin is not None and cloud != "gcp":
        assert cloud_lock_pins("cpu-minimal")[cloud][region] == pin


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_locked_package_is_pinned_and_hashed(name):
    lines = requirements(SHIPPED[name].onprem.lock_path)
    assert lines, "the lock has no requirements"
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^\s=]+( --hash=sha256:[0-9a-f]{64})+", line), line


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_promised_versions_are_what_the_lock_installs(name):
    image = SHIPPED[name]
    locked = dict(line.split(" ")[0].split("==") for line in requirements(image.onprem.lock_path))
    for package, version in image.versions.items():
        if package not in ("python", "cuda"):  # not pip packages
            assert locked[package] == version


def test_pytorch_image_pins_torch_2_13_0():
    image = get_image("pytorch")
    assert image.versions["torch"] == "2.13.0"
    assert image.onprem.python == "==3.11"
    torch = [line for line in requirements(image.onprem.lock_path) if line.startswith("torch==")]
    assert len(torch) == 1
    assert torch[0].startswith("torch==2.13.0 --hash=sha256:")


def test_get_image_unknown_lists_available():
    with pytest.raises(NotFoundError) as info:
        get_image("tensorflow")
    assert str(info.value) == (
        "unknown image 'tensorflow'; available: cpu-jupyter, cpu-minimal, pytorch (see images/ or `deepops images ls`)"
    )


@pytest.fixture
def image_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped images/ folder to tamper with."""
    folder = tmp_path / "images"
    shutil.copytree(images_dir(), folder)
    return folder


def test_copied_images_verify(image_copy):
    images = load_images(image_copy)
    assert images["cpu-minimal"].onprem.lock_path == (image_copy / "locks" / "cpu-minimal.txt").resolve()
    assert verify_onprem_lock(images["cpu-minimal"]) is None


def test_tampered_lock_is_reported(image_copy):
    lock = image_copy / "locks" / "cpu-minimal.txt"
    lock.write_text(lock.read_text().replace("packaging==24.2", "packaging==24.1"))
    image = load_images(image_copy)["cpu-minimal"]
    problem = verify_onprem_lock(image)
    assert problem is not None
    assert problem.startswith("lock cpu-minimal.txt has sha256 ")
    assert problem.endswith(f", the image pins {image.onprem.sha256}")
    assert image.onprem.sha256 not in problem.split(",")[0]


def test_missing_lock_is_reported(image_copy):
    (image_copy / "locks" / "pytorch-2.13.0-py311-linux-x86_64.txt").unlink()
    problem = verify_onprem_lock(load_images(image_copy)["pytorch"])
    assert problem is not None
    assert problem.startswith("lock ")
    assert problem.endswith("unreadable: No such file or directory")


def test_image_without_onprem_pin(tmp_path):
    (tmp_path / "bare.yaml").write_text("name: bare\ngpu_required: true\n")
    image = load_images(tmp_path)["bare"]
    assert image.gpu_required is True
    assert provider("onprem").image_pin(image, None) is None
    assert verify_onprem_lock(image) == "no on-prem pin"


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("description: no name\n", 1, "an image file needs at least `name:`"),
        ("name: x\nversions: {}\nonprem:\n  lock: locks/x.txt\n", 3, "onprem needs `lock:` and `sha256:`"),
    ],
)
def test_bad_image_file_names_file_and_line(tmp_path, text, line, expected):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(FileError) as info:
        load_images(tmp_path)
    assert str(info.value) == f"{tmp_path / 'x.yaml'}:{line}: {expected}"
