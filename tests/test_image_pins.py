"""Cloud pins carry what their image declares: each lock entry records its image's driver and CUDA,
and a lock contradicting the image definition is refused when read and by `deepops images verify`."""

import shutil
from pathlib import Path

import pytest

from deepops_infra.errors import UserError
from deepops_infra.images import check_cloud_locks, load_images
from deepops_infra.paths import images_dir
from deepops_infra.providers.cloudimages import agrees, load_lock, lock_clouds

PYTORCH_ON_GCP = """images:
  pytorch:
    source: deeplearning-platform-release common-cu124-v20250325-ubuntu-2204-py310
    driver: "{driver}"
    cuda: "{cuda}"
    regions:
      global: projects/deeplearning-platform-release/global/images/common-cu124-v20250325-ubuntu-2204-py310
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    copy = tmp_path / "images"
    shutil.copytree(images_dir(), copy)
    return copy


def test_every_shipped_pin_agrees_with_its_image() -> None:
    images = load_images()
    assert set(lock_clouds()) == {"aws", "azure", "gcp"}
    for cloud in lock_clouds():
        for name, pins in load_lock(cloud).items():
            gpu = images[name].gpu
            if pins.unavailable:
                assert not pins.regions and "bake" in pins.unavailable
            elif gpu is not None:
                assert agrees(pins.driver, gpu.driver_version) and agrees(pins.cuda, gpu.cuda)
            assert pins.unavailable or (pins.driver and pins.cuda), (cloud, name)


def test_pytorch_is_unavailable_on_every_cloud_until_a_matching_image_is_baked() -> None:
    from deepops_infra.images import cloud_lock_pins

    assert cloud_lock_pins("pytorch") == {}
    assert all(load_lock(cloud)["pytorch"].unavailable for cloud in lock_clouds())


@pytest.mark.parametrize(
    ("recorded", "declared", "ok"),
    [("13.0", "13.0.2", True), ("13.0.2", "13.0.2", True), ("12.4", "13.0.2", False), ("580", "580.95.05", True)],
)
def test_versions_agree_on_the_components_both_give(recorded: str, declared: str, ok: bool) -> None:
    assert agrees(recorded, declared) is ok


def test_a_contradicting_pin_is_refused_at_load(folder: Path) -> None:
    lock = folder / "gcp.lock.yaml"
    lock.write_text(PYTORCH_ON_GCP.format(driver="550", cuda="12.4"))
    with pytest.raises(UserError, match=r"gcp.lock.yaml:2: pytorch: the pinned image has driver 550, CUDA 12.4; "):
        load_lock("gcp", folder)
    lock.write_text(PYTORCH_ON_GCP.format(driver="580.95.05", cuda="13.0"))
    load_lock.cache_clear()
    assert load_lock("gcp", folder)["pytorch"].cuda == "13.0"


def test_a_gpu_image_pin_without_recorded_versions_is_refused(folder: Path) -> None:
    (folder / "gcp.lock.yaml").write_text(PYTORCH_ON_GCP.replace('    driver: "{driver}"\n', "").format(cuda="13.0"))
    with pytest.raises(UserError, match=r"pytorch: record the pinned image's `driver:` and `cuda:`"):
        check_cloud_locks(folder)


def test_unavailable_and_regions_exclude_each_other(folder: Path) -> None:
    lock = folder / "aws.lock.yaml"
    lock.write_text(
        lock.read_text().replace("  pytorch:\n", "  pytorch:\n    regions: {us-east-1: ami-0f7c4a792e3fb63c8}\n")
    )
    with pytest.raises(UserError, match="`unavailable:` and `regions:` exclude each other"):
        load_lock("aws", folder)


def test_images_verify_refuses_a_contradicting_lock(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI, offline and whatever --cloud: a UserError (one line, exit 2), nothing printed."""
    from typer.testing import CliRunner

    import deepops_infra.images
    import deepops_infra.providers.cloudimages
    from deepops_infra.cli import app

    (folder / "gcp.lock.yaml").write_text(PYTORCH_ON_GCP.format(driver="550", cuda="12.4"))
    for module in (deepops_infra.images, deepops_infra.providers.cloudimages):
        monkeypatch.setattr(module, "images_dir", lambda: folder)
    load_images.cache_clear()
    load_lock.cache_clear()
    try:
        result = CliRunner().invoke(app, ["images", "verify"])
    finally:
        load_images.cache_clear()
        load_lock.cache_clear()
    assert isinstance(result.exception, UserError), result.output
    assert "gcp.lock.yaml:2: pytorch: the pinned image has driver 550, CUDA 12.4" in str(result.exception)
    assert result.stdout == ""
