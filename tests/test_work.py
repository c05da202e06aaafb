"""Working on a machine, the quick parts: task file and command-line options merged into one
order, what `run` runs, `--env` checks, a task file's image pin checked like --like's, and the
server's bounded runner (output size, time)."""

import sys
import time
from pathlib import Path

import pytest

from deepops_infra.cli.work import Work, _envs, prepare
from deepops_infra.errors import OperationError, UserError
from deepops_infra.service.machines import MachineOrder
from deepops_infra.taskfile import load_task

TASK = """\
name: detr
resources:
  gpus: 0
  image: cpu-minimal
  image_pin: sha256:abc
  ttl: 2h
workdir: .
envs: {SEED: "7 seven", MODE: offline}
setup: pip install -e .
run: python train.py
"""


@pytest.fixture
def task_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEEPOPS_HOME", str(tmp_path / "home"))
    (tmp_path / "train.py").write_text("print('hi')\n")
    path = tmp_path / "task.yaml"
    path.write_text(TASK)
    return path


def test_command_line_options_override_the_task_file(task_file: Path) -> None:
    order, work = prepare(MachineOrder(ttl="30m", name="mine"), task_file, None)
    assert (order.ttl, order.name, order.gpus, order.image, order.image_pin) == (
        "30m",
        "mine",
        "0",
        "cpu-minimal",
        "sha256:abc",
    )
    assert work.upload is not None and work.upload.source == task_file.parent  # the file's workdir, measured
    assert work.envs == {"SEED": "7 seven", "MODE": "offline"}
    other, _ = prepare(MachineOrder(image="pytorch"), task_file, None)
    assert (other.image, other.image_pin) == ("pytorch", None)  # the file's pin is for the file's image
    assert not (task_file.parent / "home").exists()  # nothing written while preparing


def test_what_run_runs(task_file: Path) -> None:
    work = Work(task=load_task(task_file), envs={"SEED": "7 seven"})
    assert work.command(["python", "x.py"])[:2] == ["sh", "-c"]
    assert work.command(None) == ["sh", "-c", "export SEED='7 seven'\npython train.py"]
    assert Work().command(["python", "x.py"]) == ["python", "x.py"]  # no envs: run as given
    assert Work().command(["python a.py && python b.py"]) == ["sh", "-c", "python a.py && python b.py"]
    with pytest.raises(UserError, match="give the command after --"):
        Work().command(None)


def test_env_pairs_are_checked() -> None:
    assert _envs(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in ("NOVALUE", "1A=x", "DEEPOPS_MACHINE=x", "=x"):
        with pytest.raises(UserError, match="--env"):
            _envs([bad])


def test_a_moved_image_pin_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.intake import Options, build_request

    monkeypatch.setenv("DEEPOPS_HOME", str(tmp_path / "home"))
    settings = Settings.from_env()
    _, image = build_request(settings, Options(cloud="onprem"))
    from deepops_infra.intake import _pin_now

    pin = _pin_now(settings, image, "onprem", None)
    build_request(settings, Options(cloud="onprem", image_pin=pin))  # today's pin: accepted
    with pytest.raises(UserError, match=r"image_pin: image cpu-minimal now pins sha256:.* asks for sha256:old"):
        build_request(settings, Options(cloud="onprem", image_pin="sha256:old"))
    with pytest.raises(UserError, match="not auto"):
        build_request(settings, Options(cloud="auto", image_pin=pin))


def test_bounded_run_limits_output_and_time() -> None:
    from deepops_infra.server.jobs import bounded_run

    code, out, _ = bounded_run(["sh", "-c", "echo hello; echo oops >&2"], 100)
    assert (code, out) == (0, b"hello\n")
    code, out, _ = bounded_run([sys.executable, "-c", "import sys; sys.stdout.write('x' * 10**6)"], 1000)
    assert len(out) == 1000 and code != 0  # ended once it wrote more than it may
    started = time.monotonic()
    with pytest.raises(OperationError, match="did not answer within 1s"):
        bounded_run(["sh", "-c", "sleep 60 & sleep 60"], 100, seconds=1)
    assert time.monotonic() - started < 50  # the whole group ended, not waited for


def test_logs_can_show_only_the_end(tmp_path: Path) -> None:
    import os
    import subprocess

    from deepops_infra.jobs import logs_command

    job = tmp_path / ".deepops" / "jobs" / "j-0123abcd"
    job.mkdir(parents=True)
    (job / "output.log").write_text("a" * 100 + "THE END\n")
    (job / "exit").write_text("0\n")
    env = {**os.environ, "DEEPOPS_WORKSPACE": str(tmp_path), "DEEPOPS_MACHINE": "m-1"}
    out = subprocess.run(logs_command("j-0123abcd", False, last_bytes=8), env=env, capture_output=True, text=True)
    assert out.stdout == "THE END\n"


def test_logs_default_to_the_last_started_job_not_the_last_ended(tmp_path: Path) -> None:
    import os
    import subprocess

    from deepops_infra.jobs import logs_command, new_job_id, start_command
    from tests.conftest import wait_for

    env = {**os.environ, "DEEPOPS_WORKSPACE": str(tmp_path), "DEEPOPS_MACHINE": "m-1"}
    first, second = new_job_id(), new_job_id()
    subprocess.run(start_command(first, "sleep 1; echo first"), env=env, check=True, capture_output=True)
    time.sleep(0.05)
    subprocess.run(start_command(second, "echo second"), env=env, check=True, capture_output=True)
    wait_for((tmp_path / ".deepops" / "jobs" / first / "exit").exists, 60, "the first job to end after the second")
    out = subprocess.run(logs_command(None, False), env=env, capture_output=True, text=True)
    assert out.stdout == "second\n"
