"""The GPU roles with real ansible-runner plays on localhost: check mode for every role, real runs
where no GPU or kernel module is needed (framework, container runtime configuration, validation
on the CPU), a second run that changes nothing, the reboot refusal, and ansible-lint's
production profile. Fast structure checks (no Ansible run) are not marked `ansible`.
"""

import functools
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepops_infra.ansible import ansible_env
from deepops_infra.config import Settings
from deepops_infra.gpuvalidate.runner import payload
from deepops_infra.images import get_image
from deepops_infra.paths import roles_dir

ROLES = ["nvidia_driver", "cuda_toolkit", "container_toolkit", "framework", "gpu_validate"]
CPU_LOCK = get_image("cpu-minimal").onprem
# A machine where the driver role sees an NVIDIA GPU on the PCI bus (sysfs layout, no driver needed).
PIN = {"nvidia_driver_branch": "580", "nvidia_driver_version": "580.95.05"}


@dataclass
class Outcome:
    ok: bool
    changed: int
    failures: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    skipped_tasks: list[str] = field(default_factory=list)
    ran_tasks: list[str] = field(default_factory=list)


def play(tmp_path: Path, tasks: list[dict], extravars: dict[str, Any], check: bool = False) -> Outcome:
    """Run one play on localhost (connection local, no become) with the project's Ansible settings."""
    import ansible_runner

    from deepops_infra.ansible import _ensure_ansible_on_path

    _ensure_ansible_on_path()
    settings = Settings(home=tmp_path / "home")
    (settings.ansible_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (tmp_path / "runner").mkdir(exist_ok=True)
    book = tmp_path / f"play-{len(list(tmp_path.glob('play-*')))}.yml"
    book.write_text(yaml.safe_dump([{"name": "Test", "hosts": "all", "gather_facts": False, "tasks": tasks}]))
    outcome = Outcome(ok=False, changed=0)

    def on_event(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        kind = event.get("event")
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            res = data.get("res") or {}
            outcome.failures.append(f"{data.get('task')}: {res.get('msg') or res.get('stderr') or res}")
        elif kind == "runner_on_skipped":
            outcome.skipped_tasks.append(str(data.get("task")))
        elif kind == "runner_on_ok":
            outcome.ran_tasks.append(str(data.get("task")))
        elif kind == "playbook_on_stats":
            outcome.stats = data.get("artifact_data") or {}
            outcome.changed = sum((data.get("changed") or {}).values())
        return False

    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=str(book),
        inventory={
            "all": {
                "hosts": {
                    "localhost": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "ansible_become": False,
                    }
                }
            }
        },
        extravars=extravars,
        envvars=ansible_env(settings),
        event_handler=on_event,
        quiet=True,
        cmdline="--check" if check else None,
    )
    outcome.ok = result.status == "successful" and result.rc == 0
    return outcome


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A local package mirror serving the repositories' signing keys (as an internal mirror would)."""
    root = tmp_path / "mirror"
    for key in ("cuda/debian12/x86_64/3bf863cc.pub", "cuda/debian12/sbsa/3bf863cc.pub", "libnvidia-container/gpgkey"):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def role(name: str, **kwargs: Any) -> dict:
    return {"name": f"Run {name}", "ansible.builtin.include_role": {"name": name, **kwargs}}


def fake_pci(root: Path, *devices: tuple[str, str, str]) -> Path:
    """A sysfs PCI tree: (address, vendor, class) per device."""
    for address, vendor, pci_class in devices:
        (root / address).mkdir(parents=True)
        (root / address / "vendor").write_text(vendor + "\n")
        (root / address / "class").write_text(pci_class + "\n")
        (root / address / "device").write_text("0x2330\n")
    return root


# -- structure (no Ansible run) ---------------------------------------------------------------


@pytest.mark.parametrize("name", ROLES)
def test_role_layout_documents_every_default(name):
    base = roles_dir() / name
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text())
    readme = (base / "README.md").read_text()
    section = readme.split("## Role Variables", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert documented == set(defaults), "README Role Variables must mirror defaults/main.yml"
    text = (base / "defaults/main.yml").read_text().splitlines()
    for i, line in enumerate(text):
        if line and not line.startswith(("#", " ", "-")) and ":" in line:
            above = i - 1
            while above > 0 and text[above] and not text[above].startswith("#"):
                above -= 1  # a comment may describe a group of related defaults
            assert text[above].startswith("#"), f"{name}: default {line.split(':')[0]} has no comment"
    meta = yaml.safe_load((base / "meta/main.yml").read_text())["galaxy_info"]
    assert meta["role_name"] == name
    assert {p["name"] for p in meta["platforms"]} >= {"Ubuntu", "EL"}


@pytest.mark.parametrize("name", ["nvidia_driver", "cuda_toolkit", "container_toolkit", "framework"])
def test_per_os_family_task_files(name):
    tasks = roles_dir() / name / "tasks"
    assert (tasks / "Debian.yml").exists() and (tasks / "RedHat.yml").exists()
    assert '"{{ ansible_os_family }}.yml"' in (tasks / "main.yml").read_text()


def test_committed_probe_is_the_generated_payload():
    committed = (roles_dir() / "gpu_validate/files/gpuvalidate.py").read_text()
    assert committed == payload(), "run: python -m deepops_infra.gpuvalidate --write-payload " + str(
        roles_dir() / "gpu_validate/files/gpuvalidate.py"
    )


def test_pci_scan_counts_only_nvidia_gpus(tmp_path):
    sys.path.insert(0, str(roles_dir() / "nvidia_driver/library"))
    try:
        import deepops_pci_gpus
    finally:
        sys.path.pop(0)
    root = fake_pci(
        tmp_path,
        ("0000:17:00.0", "0x10de", "0x030200"),  # H100: 3D controller
        ("0000:17:00.1", "0x10de", "0x040300"),  # the card's audio function
        ("0000:65:00.0", "0x10de", "0x030000"),  # a VGA-class NVIDIA GPU
        ("0000:00:02.0", "0x8086", "0x030000"),  # Intel graphics
    )
    found = deepops_pci_gpus.scan(str(root))
    assert [d["address"] for d in found] == ["0000:17:00.0", "0000:65:00.0"]
    assert deepops_pci_gpus.scan(str(tmp_path / "missing")) == []


# -- ansible-lint -----------------------------------------------------------------------------


@pytest.mark.ansible
def test_ansible_lint_production_profile():
    lint = Path(sys.executable).parent / "ansible-lint"
    paths = ["roles"]  # every role and playbook of the project
    proc = subprocess.run(
        [str(lint), "--nocolor", *paths],
        cwd=roles_dir().parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


# -- check mode, every role -------------------------------------------------------------------


@pytest.mark.ansible
def test_every_role_in_check_mode_without_gpu(tmp_path):
    """On a machine without GPUs: nothing GPU-only runs and nothing fails, in check mode."""
    venv = tmp_path / "fw"
    tasks = [
        role("nvidia_driver"),
        role("cuda_toolkit"),
        role("container_toolkit"),
        role("framework"),
        role("gpu_validate"),
    ]
    out = play(
        tmp_path,
        tasks,
        {
            **PIN,
            "nvidia_driver_pci_root": str(tmp_path / "no-pci"),
            "cuda_toolkit_version": "13.0.2",
            "container_toolkit_version": "1.18.0",
            "framework_venv": str(venv),
            "framework_lock_src": str(CPU_LOCK.lock_path),
            "framework_lock_sha256": CPU_LOCK.sha256,
            "framework_expected": {"packaging": "24.2"},
            "framework_system_packages": False,
        },
        check=True,
    )
    assert out.ok, out.failures
    assert not venv.exists(), "check mode created the venv"
    gpu_only = (
        "Install the pinned driver",
        "Enable persistence mode (nvidia-persistenced)",
        "Install the pinned toolkit",
    )
    for task in gpu_only:
        assert task in out.skipped_tasks
    assert "Validate the GPUs (inventory, matmul, memory and host bandwidth, all-reduce)" in out.skipped_tasks


@pytest.mark.ansible
def test_gpu_machine_in_check_mode_plans_the_driver_install(tmp_path, mirror):
    """A GPU on the PCI bus (and a bake without one) makes the driver and CUDA tasks run, in check mode."""
    pci = fake_pci(tmp_path / "pci", ("0000:17:00.0", "0x10de", "0x030200"))
    out = play(
        tmp_path,
        [role("nvidia_driver"), role("cuda_toolkit"), role("container_toolkit")],
        {
            **PIN,
            "nvidia_driver_pci_root": str(pci),
            "nvidia_driver_persistence_mode": False,
            "nvidia_driver_repo_base": mirror + "/cuda",
            "cuda_toolkit_repo_base": mirror + "/cuda",
            "container_toolkit_repo_base": mirror + "/libnvidia-container",
            "cuda_toolkit_version": "13.0.2",
            "cuda_toolkit_without_gpu": True,
            "container_toolkit_version": "1.18.0",
            "container_toolkit_without_gpu": True,
            "container_toolkit_runtime": "docker",
            "container_toolkit_docker_config": str(tmp_path / "docker/daemon.json"),
            "container_toolkit_restart": False,  # no systemd in this test machine
        },
        check=True,
    )
    assert out.ok, out.failures
    assert "Add NVIDIA's CUDA repository, trusted only with its key" in out.ran_tasks
    assert "Add the NVIDIA Container Toolkit repository, trusted only with its key" in out.ran_tasks
    assert out.changed > 0
    assert not (tmp_path / "docker/daemon.json").exists()
    assert not Path("/etc/apt/sources.list.d/nvidia-cuda.sources").exists()


@pytest.mark.ansible
@pytest.mark.parametrize(
    ("extravars", "message"),
    [
        ({"nvidia_driver_branch": "580", "nvidia_driver_version": "575.57.08"}, "nvidia_driver_branch"),
        ({"nvidia_driver_branch": "latest", "nvidia_driver_version": "580.95.05"}, "nvidia_driver_branch"),
    ],
)
def test_driver_pin_is_checked(tmp_path, extravars, message):
    out = play(tmp_path, [role("nvidia_driver")], extravars, check=True)
    assert not out.ok and message in out.failures[0]


@pytest.mark.ansible
def test_reboot_is_refused_on_a_local_connection(tmp_path):
    out = play(tmp_path, [role("nvidia_driver", tasks_from="reboot")], PIN)
    assert not out.ok
    assert "needs a reboot, but this play runs on that machine itself (connection local)" in out.failures[0]
    assert "nvidia_driver_reboot=false" in out.failures[0]


# -- real runs --------------------------------------------------------------------------------


@pytest.mark.ansible
def test_framework_installs_the_pinned_lock_and_is_idempotent(tmp_path):
    venv = tmp_path / "opt/env"
    extravars = {
        "framework_venv": str(venv),
        "framework_python": sys.executable,
        "framework_lock_src": str(CPU_LOCK.lock_path),
        "framework_lock_sha256": CPU_LOCK.sha256,
        "framework_expected": {"packaging": "24.2"},
        "framework_system_packages": False,
        "framework_pip_cache": str(tmp_path / "pip-cache"),
    }
    first = play(tmp_path, [role("framework")], extravars)
    assert first.ok, first.failures
    assert first.changed >= 3  # venv, lock, packages
    version = subprocess.run(
        [str(venv / "bin/python"), "-c", "import packaging; print(packaging.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "24.2"
    assert (venv / "deepops-lock.txt").read_bytes() == CPU_LOCK.lock_path.read_bytes()
    second = play(tmp_path, [role("framework")], extravars)
    assert second.ok and second.changed == 0
    again_checked = play(tmp_path, [role("framework")], extravars, check=True)
    assert again_checked.ok and again_checked.changed == 0

    # The image promising another version than the lock installs fails the role, saying why.
    wrong = play(tmp_path, [role("framework")], {**extravars, "framework_expected": {"packaging": "25.0"}})
    assert not wrong.ok
    assert f"in {venv}: packaging is 24.2, the image pins 25.0" in wrong.failures[0]


@pytest.mark.ansible
def test_framework_refuses_a_tampered_lock(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(CPU_LOCK.lock_path.read_text().replace("24.2", "24.1"))
    out = play(
        tmp_path,
        [role("framework")],
        {
            "framework_venv": str(tmp_path / "env"),
            "framework_lock_src": str(lock),
            "framework_lock_sha256": CPU_LOCK.sha256,
            "framework_system_packages": False,
        },
    )
    assert not out.ok and "does not match its pin" in out.failures[0]
    assert not (tmp_path / "env").exists()


@pytest.mark.ansible
def test_container_runtime_configured_once_and_existing_config_kept(tmp_path):
    config = tmp_path / "docker/daemon.json"
    extravars = {
        "container_toolkit_version": "1.18.0",
        "container_toolkit_without_gpu": True,
        "container_toolkit_install_packages": False,
        "container_toolkit_runtime": "docker",
        "container_toolkit_docker_config": str(config),
        "container_toolkit_restart": False,
    }
    first = play(tmp_path, [role("container_toolkit")], extravars)
    assert first.ok, first.failures
    assert json.loads(config.read_text()) == {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    second = play(tmp_path, [role("container_toolkit")], extravars)
    assert second.ok and second.changed == 0

    # Settings of the administrator are merged into, never dropped.
    config.write_text(json.dumps({"log-driver": "journald", "runtimes": {"runsc": {"path": "/usr/bin/runsc"}}}))
    merged = play(tmp_path, [role("container_toolkit")], {**extravars, "container_toolkit_docker_default": True})
    assert merged.ok, merged.failures
    assert json.loads(config.read_text()) == {
        "log-driver": "journald",
        "default-runtime": "nvidia",
        "runtimes": {"runsc": {"path": "/usr/bin/runsc"}, "nvidia": {"path": "nvidia-container-runtime", "args": []}},
    }
    # A configuration that already names the NVIDIA runtime (say, by nvidia-ctk) is left byte for byte.
    handmade = '{"runtimes": {"nvidia": {"path": "/usr/local/bin/nvidia-container-runtime"}}}'
    config.write_text(handmade)
    kept = play(tmp_path, [role("container_toolkit")], extravars)
    assert kept.ok and kept.changed == 0
    assert config.read_text() == handmade


@pytest.mark.ansible
def test_container_toolkit_leaves_a_cpu_machine_alone(tmp_path):
    config = tmp_path / "daemon.json"
    out = play(
        tmp_path,
        [role("container_toolkit")],
        {
            "container_toolkit_version": "1.18.0",
            "container_toolkit_runtime": "docker",
            "container_toolkit_docker_config": str(config),
        },
    )
    assert out.ok and out.changed == 0 and not config.exists()


@pytest.mark.ansible
def test_gpu_validate_runs_on_cpu_and_reports(tmp_path):
    """The role ships the probe, runs it with the given interpreter (torch here), keeps and reports the JSON."""
    result_path = tmp_path / "validation.json"
    extravars = {
        "gpu_validate_python": sys.executable,
        "gpu_validate_without_gpu": True,
        "gpu_validate_expect": {"count": 0},
        "gpu_validate_result_path": str(result_path),
    }
    out = play(tmp_path, [role("gpu_validate")], extravars)
    assert out.ok, out.failures
    result = out.stats["deepops_gpu_validation"]
    assert result["passed"] is True and result["device"] == "cpu"
    assert {c["name"] for c in result["checks"]} >= {"gpu inventory", "cpu bf16 matmul", "cpu memory bandwidth"}
    assert json.loads(result_path.read_text())["checks"] == result["checks"]

    # An order the machine does not meet fails the play with the reason.
    short = play(tmp_path, [role("gpu_validate")], {**extravars, "gpu_validate_expect": {"count": 2, "marker": "H100"}})
    assert not short.ok
    assert (
        "GPU validation failed on localhost: gpu inventory: ordered 2 x H100, found none; 0 found"
        in (short.failures[0])
    )
    # Thresholds apply: a spec this CPU cannot reach fails the figures, report-only mode passes.
    spec = {"bf16_tflops": 1e6, "source": "test spec"}
    report = play(
        tmp_path,
        [role("gpu_validate")],
        {**extravars, "gpu_validate_config": {"spec": spec}, "gpu_validate_fail": False},
    )
    assert report.ok
    checks = {c["name"]: c for c in report.stats["deepops_gpu_validation"]["checks"]}
    assert checks["cpu bf16 matmul"]["passed"] is False and checks["cpu bf16 matmul"]["threshold"] == 0.6
