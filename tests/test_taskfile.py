"""Task files (`deepops up -f`): validated with file and line, merged under the command line."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from deepops_infra.errors import UserError
from deepops_infra.intake import Options
from deepops_infra.taskfile import dump_spec, load_task, merged, spec_of

GOOD = """\
name: detr-train
team: vision
project: detr
resources:
  gpus: A100:1
  cloud: onprem
  image: cpu-minimal
  ttl: 8h
  idle_timeout: 30m
  disk: 20
workdir: code
envs:
  WANDB_MODE: offline
  SEED: 7
  DEBUG: true
setup: pip install -e .
run: python train.py --epochs 1
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return path


def test_a_good_task_file_gives_options_and_steps(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, GOOD))
    assert task.options == Options(
        gpus="A100:1",
        cloud="onprem",
        image="cpu-minimal",
        ttl="8h",
        idle_timeout="30m",
        disk=20,
        team="vision",
        project="detr",
        name="detr-train",
    )
    assert task.workdir == (tmp_path / "code").resolve()
    assert task.envs == {"WANDB_MODE": "offline", "SEED": "7", "DEBUG": "true"}
    assert (task.setup, task.run) == ("pip install -e .", "python train.py --epochs 1")


def test_command_line_options_override_the_file(tmp_path: Path) -> None:
    task = load_task(write(tmp_path, GOOD))
    opts = merged(task, Options(ttl="1h", gpus="0"))
    assert (opts.ttl, opts.gpus, opts.idle_timeout, opts.team) == ("1h", "0", "30m", "vision")
    assert merged(None, Options(ttl="2h")) == Options(ttl="2h")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("resources:\n  gpus: A100:1\n  tll: 8h\n", 3, "resources.tll: unknown key"),
        ("resources:\n  ttl: forever\n", 2, "ttl:"),
        ("resources:\n  ttl: 0s\n", 2, "longer than zero"),
        ("resources:\n  gpus: Z999:1\n", 2, "gpus: unknown GPU model"),
        ("resources:\n  gpus: [1]\n", 2, "gpus:"),
        ("resources:\n  cloud: mars\n", 2, "cloud: unknown cloud"),
        ("resources:\n  disk: big\n", 2, "disk: must be a whole number"),
        ("resources:\n  disk: 0\n", 2, "out of range"),
        ("resources:\n  spot: maybe\n", 2, "spot: must be true or false"),
        ("resources: [gpus]\n", 1, "resources: must be a mapping"),
        ("run: python a.py\nworkdir: nowhere\n", 2, "is not a folder"),
        ("envs:\n  1BAD: x\n", 2, "is not a variable name"),
        ("envs:\n  DEEPOPS_MACHINE: x\n", 2, "not DEEPOPS_"),
        ("envs:\n  A: [1, 2]\n", 2, "envs.A: must be text"),
        ("setup: ''\n", 1, "setup: is empty"),
        ("team: Vision Team\n", 1, "team:"),
        ("name: UPPER\n", 1, "name:"),
        ("run: a\nrun: b\n", 2, "duplicate"),
        ("- gpus: 1\n", 1, "a task file is a mapping"),
        ("owners: me\n", 1, "owners: unknown key"),
    ],
)
def test_a_bad_task_file_is_refused_naming_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_task(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_a_missing_task_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_task(tmp_path / "nope.yaml")


def test_the_spec_of_a_machine_loads_back_as_the_same_configuration(tmp_path: Path) -> None:
    machine = SimpleNamespace(
        id="m-0123abcd",
        cloud="onprem",
        region=None,
        host="localhost",
        image="cpu-minimal",
        image_pin="sha256:" + "a" * 64,
        team="vision",
        project="detr",
        request={"gpus": "A100:2", "ttl": 28800, "idle_timeout": 90061, "disk_gb": None, "spot": False},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec_of(machine), machine.id))
    task = load_task(path)
    assert task.options == Options(
        gpus="A100:2", cloud="onprem", host="localhost", image="cpu-minimal", ttl="8h", idle_timeout="1d1h1m1s",
        team="vision", project="detr",
    )  # fmt: skip
    assert task.image_pin == machine.image_pin
