"""Detached jobs: the scripts that start, list and show jobs, run in a workspace as in a machine."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepops_infra.errors import UserError
from deepops_infra.jobs import list_command, logs_command, new_job_id, parse_list, start_command
from tests.conftest import wait_for


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment a command gets in a machine (what env.sh exports)."""
    workspace = tmp_path / "m-0123abcd"
    workspace.mkdir()
    yield {**os.environ, "DEEPOPS_WORKSPACE": str(workspace), "DEEPOPS_MACHINE": "m-0123abcd"}
    for pid_file in workspace.glob(".deepops/jobs/*/pid"):  # a failed test leaves no job behind
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), 9)


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def jobs(env: dict[str, str]) -> dict[str, object]:
    return {j.id: j for j in parse_list(run(list_command(), env).stdout)}


def test_a_job_runs_detached_with_its_envs_and_keeps_output_and_exit_status(machine: dict[str, str]) -> None:
    job = new_job_id()
    gate = Path(machine["DEEPOPS_WORKSPACE"]) / "go"
    command = f"echo start $SEED; while [ ! -f {gate} ]; do sleep 0.1; done; echo done >&2; pwd; exit 3"
    started = run(start_command(job, command, {"SEED": "7 seven"}), machine)
    assert started.returncode == 0 and started.stdout.strip() == job
    wait_for(lambda: jobs(machine)[job].state == "running", 60, "the job running")  # type: ignore[attr-defined]
    gate.touch()
    wait_for(lambda: jobs(machine)[job].state == "exited", 60, "the job ended")  # type: ignore[attr-defined]
    listed = jobs(machine)[job]
    assert (listed.exit_status, listed.command) == (3, command.splitlines()[0])  # type: ignore[attr-defined]
    out = run(logs_command(job, follow=False), machine).stdout
    assert out.splitlines() == ["start 7 seven", "done", machine["DEEPOPS_WORKSPACE"]]
    mode = os.stat(Path(machine["DEEPOPS_WORKSPACE"]) / ".deepops/jobs" / job).st_mode & 0o777
    assert mode == 0o700


def test_logs_follow_streams_until_the_job_ends_and_defaults_to_the_latest(machine: dict[str, str]) -> None:
    job = new_job_id()
    run(start_command(job, "for i in 1 2 3; do echo line $i; sleep 0.2; done"), machine)
    followed = run(logs_command(None, follow=True), machine)
    assert followed.returncode == 0
    assert followed.stdout.splitlines() == ["line 1", "line 2", "line 3"]


def test_a_killed_job_is_lost_not_running(machine: dict[str, str]) -> None:
    job = new_job_id()
    run(start_command(job, "sleep 60"), machine)
    pid_file = Path(machine["DEEPOPS_WORKSPACE"]) / ".deepops/jobs" / job / "pid"
    wait_for(pid_file.exists, 60, "the pid file")
    os.killpg(int(pid_file.read_text()), 9)
    wait_for(lambda: jobs(machine)[job].state == "lost", 60, "the job lost")  # type: ignore[attr-defined]


def test_unknown_jobs_and_bad_ids_are_refused(machine: dict[str, str]) -> None:
    missing = run(logs_command("j-00000000", follow=False), machine)
    assert missing.returncode == 3 and "no jobs" in missing.stderr
    with pytest.raises(UserError, match="not a job ID"):
        logs_command("../etc", follow=False)
    with pytest.raises(UserError, match="give the command"):
        start_command(new_job_id(), "  ")
    assert jobs(machine) == {}
