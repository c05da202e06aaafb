"""`deepops images ls|show|verify`, the image file's GPU stack and bases, and the cloud-pin hook."""

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepops_infra.images as images_module
from deepops_infra.cli import app
from deepops_infra.images import cloud_lock_pins, cloud_pin_verifier, get_image, load_images
from deepops_infra.paths import images_dir
from deepops_infra.yamlfile import FileError


def test_images_ls_json_shows_gpu_stack_and_pins(sqlite_deepops):
    rows = {r["name"]: r for r in sqlite_deepops.json("images", "ls")}
    assert set(rows) == {"cpu-jupyter", "cpu-minimal", "pytorch"}
    torch = rows["pytorch"]
    assert torch["gpu"] == {
        "driver_branch": "580",
        "driver_version": "580.95.05",
        "cuda": "13.0.2",
        "container_toolkit": "1.18.0",
        "framework": {"torch": "2.13.0"},
    }
    assert rows["cpu-minimal"]["gpu"] is None
    assert all(r["onprem_lock_ok"] for r in rows.values())
    assert torch["onprem_pin"] == get_image("pytorch").onprem.pin
    assert set(torch["bases"]) == {"aws", "gcp", "azure"}


def test_images_ls_table(sqlite_deepops):
    out = sqlite_deepops.run("images", "ls", check=True).stdout
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["NAME", "DRIVER", "CUDA", "FRAMEWORK"]
    pytorch = next(line for line in lines if line.startswith("pytorch"))
    assert "580.95.05" in pytorch and "13.0.2" in pytorch and "torch 2.13.0" in pytorch and " ok " in pytorch


def test_images_show(sqlite_deepops):
    data = sqlite_deepops.json("images", "show", "pytorch")
    assert data["source"] == str(images_dir() / "pytorch.yaml")
    assert data["onprem_lock_problem"] is None and data["onprem_python"] == "==3.11"
    text = sqlite_deepops.run("images", "show", "pytorch", check=True).stdout
    assert "nvidia driver        580.95.05 (branch 580)" in text
    assert "framework            torch==2.13.0" in text
    assert "base gcp      us-central1    projects/ubuntu-os-cloud/global/images/ubuntu-2204-jammy-v20250516" in text


def test_images_show_unknown_is_one_line(sqlite_deepops):
    proc = sqlite_deepops.run("images", "show", "tensorflow")
    assert proc.returncode == 2
    assert proc.stderr.startswith("deepops: error: unknown image 'tensorflow'; available: cpu-jupyter, cpu-minimal,")


def test_images_verify_onprem(sqlite_deepops):
    rows = sqlite_deepops.json("images", "verify")
    assert [(r["image"], r["ok"]) for r in rows] == [("cpu-jupyter", True), ("cpu-minimal", True), ("pytorch", True)]
    assert rows[1]["pin"] == get_image("cpu-minimal").onprem.pin


def test_images_verify_cloud_without_hook_is_refused(sqlite_deepops):
    proc = sqlite_deepops.run("images", "verify", "--cloud", "ibm")
    assert proc.returncode == 2
    assert proc.stderr == (
        "deepops: error: --cloud ibm: no pin check for ibm yet "
        "(deepops_infra/providers/ibm/images.py has no verify_cloud_pins); use onprem, aws, gcp or azure\n"
    )


@pytest.fixture
def image_copy(tmp_path, monkeypatch):
    """The CLI reading a private copy of images/ (to tamper with)."""
    folder = tmp_path / "images"
    shutil.copytree(images_dir(), folder)
    monkeypatch.setattr(images_module, "images_dir", lambda: folder)
    load_images.cache_clear()
    yield folder
    load_images.cache_clear()


def test_images_verify_finds_a_tampered_lock(image_copy):
    lock = image_copy / "locks" / "cpu-minimal.txt"
    lock.write_text(lock.read_text().replace("packaging==24.2", "packaging==24.1"))
    result = CliRunner().invoke(app, ["images", "verify", "--json"])
    assert result.exit_code == 1
    rows = {r["image"]: r for r in json.loads(result.stdout)}
    assert rows["pytorch"]["ok"] is True and rows["cpu-minimal"]["ok"] is False
    assert rows["cpu-minimal"]["detail"].startswith("lock cpu-minimal.txt has sha256 ")


def test_cloud_pin_hook_is_called(image_copy, monkeypatch):
    calls = []

    def verify_cloud_pins(settings, names):
        calls.append(names)
        return [
            {"image": "pytorch", "region": "r1", "pin": "img-1", "ok": True, "detail": "available"},
            types.SimpleNamespace(image="pytorch", region="r2", ami="img-2", ok=False, detail="deprecated"),
        ]

    module = types.ModuleType("deepops_infra.providers.fakecloud.images")
    module.verify_cloud_pins = verify_cloud_pins  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deepops_infra.providers.fakecloud", types.ModuleType("fakecloud"))
    monkeypatch.setitem(sys.modules, "deepops_infra.providers.fakecloud.images", module)
    assert cloud_pin_verifier("fakecloud") is verify_cloud_pins
    assert cloud_pin_verifier("../etc") is None and cloud_pin_verifier("nosuchcloud") is None
    result = CliRunner().invoke(app, ["images", "verify", "--cloud", "fakecloud", "--image", "pytorch", "--json"])
    assert calls == [["pytorch"]]
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [
        {"image": "pytorch", "region": "r1", "pin": "img-1", "ok": True, "detail": "available"},
        {"image": "pytorch", "region": "r2", "pin": "img-2", "ok": False, "detail": "deprecated"},
    ]


def test_cloud_lock_pins_read_every_cloud_lock(tmp_path):
    (tmp_path / "gcp.lock.yaml").write_text(
        "images:\n  pytorch:\n    regions:\n      global: projects/ml-images/global/images/deepops-pytorch-1\n"
    )
    (tmp_path / "x.yaml").write_text("name: x\n")
    assert cloud_lock_pins("pytorch", tmp_path) == {
        "gcp": {"global": "projects/ml-images/global/images/deepops-pytorch-1"}
    }
    assert cloud_lock_pins("x", tmp_path) == {}
    assert set(load_images(tmp_path)) == {"x"}  # a lock is not an image definition


@pytest.mark.parametrize(
    ("lock", "text", "line", "why"),
    [
        ("aws.lock.yaml", "images:\n  pytorch:\n    regions:\n      us-east-1: ami-latest\n", 4, "is not an AMI ID"),
        (
            "gcp.lock.yaml",
            "images:\n  p:\n    regions:\n      global: projects/p-123/global/images/family/f\n",
            4,
            "family",
        ),
        ("azure.lock.yaml", "images:\n  p:\n    regions:\n      eastus: a:b:c:latest\n", 4, "uses `latest`"),
        ("azure.lock.yaml", "images:\n  p:\n    ssh_user: 5\n    regions: {}\n", 3, "p.ssh_user must be a string"),
        ("moon.lock.yaml", "images: {}\n", 1, "no provider reads moon image pins"),
    ],
)
def test_every_lock_is_read_by_one_reader_with_its_clouds_rule(tmp_path, lock, text, line, why):
    """Whoever asks (images ls/show, placement, `up --like`), a pin that can move is refused, naming the line."""
    (tmp_path / lock).write_text(text)
    with pytest.raises(FileError) as err:
        cloud_lock_pins("pytorch", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / lock}:{line}: ") and why in err.value.message


GPU = """name: g
gpu:
  driver:
    branch: "580"
    version: {version}
  cuda: "13.0.2"
  container_toolkit: "1.18.0"
  framework:
    torch: "2.13.0"
"""


@pytest.mark.parametrize(
    ("version", "line", "message"),
    [
        ('"575.57.08"', 5, "gpu.driver.version 575.57.08 is not in branch 580"),
        ("latest", 5, "gpu.driver.version must be an exact version like 1.2.3, not 'latest'"),
        ('"580.*"', 5, "gpu.driver.version must be an exact version like 1.2.3, not '580.*'"),
    ],
)
def test_gpu_stack_must_be_exact(tmp_path: Path, version, line, message):
    (tmp_path / "g.yaml").write_text(GPU.format(version=version))
    with pytest.raises(FileError) as info:
        load_images(tmp_path)
    assert str(info.value) == f"{tmp_path / 'g.yaml'}:{line}: {message}"


def test_gpu_stack_role_vars(tmp_path: Path):
    (tmp_path / "g.yaml").write_text(GPU.format(version='"580.95.05"'))
    image = load_images(tmp_path)["g"]
    assert image.gpu.role_vars() == {
        "nvidia_driver_branch": "580",
        "nvidia_driver_version": "580.95.05",
        "cuda_toolkit_version": "13.0.2",
        "container_toolkit_version": "1.18.0",
        "framework_expected": {"torch": "2.13.0"},
    }


# -- baking: images/packer/bake.py -----------------------------------------------------------

BAKE = [sys.executable, str(images_dir() / "packer" / "bake.py")]


def _bake(*args: str):
    import subprocess

    return subprocess.run([*BAKE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_bake_vars_come_from_the_image_definition(tmp_path):
    out = tmp_path / "build" / "pytorch-aws.json"
    out.parent.mkdir()
    proc = _bake("vars", "pytorch", "--cloud", "aws", "--region", "us-east-1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    variables = json.loads(out.read_text())
    image = get_image("pytorch")
    assert variables["base"] == "099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20250516"
    assert variables["lock_sha256"] == image.onprem.sha256 and variables["image"] == "pytorch"
    roles = json.loads(Path(variables["role_vars_file"]).read_text())
    assert roles == {
        **image.gpu.role_vars(),
        "framework_lock_src": str(image.onprem.lock_path),
        "framework_lock_sha256": image.onprem.sha256,
        "framework_python": "python3.11",
    }
    # The template parses as HCL2, every variable it declares without a default is set, and it
    # provisions with the configure-gpu playbook and records its builds in a manifest.
    import hcl2

    template = hcl2.load((images_dir() / "packer" / "gpu-image.pkr.hcl").open())
    declared = {name.strip('"'): body for block in template["variable"] for name, body in block.items()}
    assert {name for name, body in declared.items() if "default" not in body} == set(variables)
    build = template["build"][0]
    playbook = build["provisioner"][0]['"ansible"']["playbook_file"]
    assert playbook == '"${path.root}/../../roles/playbooks/configure-gpu.yml"'
    assert (images_dir().parent / "roles" / "playbooks" / "configure-gpu.yml").exists()
    assert '"manifest"' in build["post-processor"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tensorflow", "--cloud", "aws", "--region", "us-east-1"], "unknown image 'tensorflow'"),
        (["pytorch", "--cloud", "aws", "--region", "ap-south-1"], "pytorch has no base for aws ap-south-1 (bases: "),
        (["cpu-minimal", "--cloud", "aws", "--region", "us-east-1"], "cpu-minimal: baking needs `gpu:`"),
    ],
)
def test_bake_vars_refuses(tmp_path, args, message):
    proc = _bake("vars", *args, "--out", str(tmp_path / "v.json"))
    assert proc.returncode == 2 and proc.stderr.startswith("bake: error: " + message)
    assert not (tmp_path / "v.json").exists()


def _manifest(builds):
    return {"builds": builds, "last_run_uuid": "run-2"}


def _build(builder, artifact, region, run="run-2", image="pytorch"):
    return {
        "name": "gpu",
        "builder_type": builder,
        "artifact_id": artifact,
        "packer_run_uuid": run,
        "custom_data": {"image": image, "cloud": "x", "region": region, "project": "ml-images"},
    }


def test_bake_record_writes_the_ids_into_the_locks(tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images_dir(), folder)
    before = (folder / "aws.lock.yaml").read_text()
    manifest = tmp_path / "packer-manifest.json"
    manifest.write_text(
        json.dumps(
            _manifest(
                [
                    _build("amazon-ebs", "us-east-1:ami-00000000000000001", "us-east-1", run="run-1"),  # older run
                    _build(
                        "amazon-ebs", "us-east-1:ami-0123456789abcdef0,eu-west-1:ami-0fedcba9876543210", "us-east-1"
                    ),
                    _build("googlecompute", "deepops-pytorch-20261121", "global"),
                ]
            )
        )
    )
    proc = _bake("record", str(manifest), "--images-dir", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "aws pytorch us-east-1 ami-0123456789abcdef0",
        "aws pytorch eu-west-1 ami-0fedcba9876543210",
        "gcp pytorch global projects/ml-images/global/images/deepops-pytorch-20261121",
    ]
    after = (folder / "aws.lock.yaml").read_text()
    header = "".join(line + "\n" for line in before.splitlines() if line.startswith("#"))
    assert after.startswith(header)
    pins = cloud_lock_pins("pytorch", folder)
    assert pins["aws"] == {  # pytorch was unavailable on AWS: the bake made it available, in its regions
        "us-east-1": "ami-0123456789abcdef0",
        "eu-west-1": "ami-0fedcba9876543210",
    }
    assert pins["gcp"] == {"global": "projects/ml-images/global/images/deepops-pytorch-20261121"}
    assert cloud_lock_pins("cpu-minimal", folder) == cloud_lock_pins("cpu-minimal")  # untouched
    # The AWS provider reads the lock bake.py wrote, other fields of the entry kept.
    from deepops_infra.providers.aws.images import load_pins

    entry = load_pins(folder)["pytorch"]
    assert entry.regions["eu-west-1"] == "ami-0fedcba9876543210" and entry.ssh_user == "ubuntu"
    # The bake installed the image's own driver and CUDA, and the lock records them.
    assert (entry.driver, entry.cuda, entry.unavailable) == ("580.95.05", "13.0.2", "")


def test_bake_record_refuses_what_is_not_an_image_id(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(_manifest([_build("amazon-ebs", "us-east-1:ami-latest", "us-east-1")])))
    proc = _bake("record", str(manifest), "--images-dir", str(folder))
    assert proc.returncode == 2
    assert proc.stderr == "bake: error: build gpu: 'ami-latest' in 'us-east-1' is not a aws image ID\n"
    assert list(folder.iterdir()) == []
