"""Bringing code to a machine: rsync with .gitignore honoured, measured and refused when too big."""

import os
import stat
from pathlib import Path

import pytest

from deepops_infra.errors import UserError
from deepops_infra.workdir import measure, pull_argv, push_argv, run_rsync


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "data").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / "train.py").write_text("print(open('data/x.txt').read())\n")
    (src / "data" / "x.txt").write_text("hello\n")
    (src / "data" / "big.bin").write_bytes(b"\0" * 50_000)
    (src / "data" / ".gitignore").write_text("*.bin\n")
    (src / ".gitignore").write_text("__pycache__/\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "a.pyc").write_bytes(b"\0" * 10_000)
    return src


@pytest.fixture
def rsh(tmp_path: Path) -> str:
    """A remote shell that runs the remote command here, as ssh would on the machine."""
    script = tmp_path / "rsh"
    script.write_text('#!/bin/sh\nshift\nexec sh -c "$*"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_measure_counts_only_what_gitignore_lets_through(project: Path) -> None:
    upload = measure(project, limit=1_000_000)
    wanted = sum(len(p.read_bytes()) for p in [project / "train.py", project / "data/x.txt"])
    wanted += len((project / ".gitignore").read_bytes()) + len((project / "data/.gitignore").read_bytes())
    assert upload.total_bytes == wanted


def test_a_folder_over_the_limit_is_refused_with_its_size(project: Path) -> None:
    (project / "weights.pt").write_bytes(b"\1" * 20_000)
    with pytest.raises(UserError, match=r"--workdir: .* holds 19\.\d KB to copy .* more than the 10\.0 KB allowed"):
        measure(project, limit=10 * 1024)


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        measure(tmp_path / "missing", limit=1024)


def test_push_copies_incrementally_and_pull_brings_results_back(project: Path, rsh: str, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    run_rsync(push_argv(rsh, measure(project, 1_000_000), f"machine:{workspace}/"), "sync")
    assert (workspace / "train.py").exists() and (workspace / "data/x.txt").read_text() == "hello\n"
    assert not (workspace / "data/big.bin").exists() and not (workspace / "__pycache__").exists()
    assert not (workspace / ".git").exists()
    before = os.stat(workspace / "data/x.txt").st_ino
    (project / "train.py").write_text("print('v2')\n")
    run_rsync(push_argv(rsh, measure(project, 1_000_000), f"machine:{workspace}/"), "sync")
    assert (workspace / "train.py").read_text() == "print('v2')\n"
    assert os.stat(workspace / "data/x.txt").st_ino == before  # unchanged files do not travel again
    (workspace / "out").mkdir()
    (workspace / "out" / "result.json").write_text('{"loss": 0.1}')
    down = tmp_path / "down"
    down.mkdir()
    run_rsync(pull_argv(rsh, f"machine:{workspace}/out", down), "sync --down")
    assert (down / "out" / "result.json").read_text() == '{"loss": 0.1}'
