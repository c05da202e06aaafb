"""Working on a machine through the real CLI in local mode on localhost (real leases, real sshd
sessions, real rsync): `run --workdir .` from a project folder, a task file with setup, run and
envs, exec + logs -f + jobs, sync both ways, `show --spec` made again with `up -f`; bad task
files and workdirs refused in one line with nothing written."""

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Deepops, declared_pool, end_processes_under, wait_for
from tests.test_cli_bad_input import assert_one_line_error

TRAIN = """\
import os
rows = open("data/train.csv").read().splitlines()[1:]
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as f:
    f.write(f"rows={len(rows)} seed={os.environ.get('SEED')}\\n")
print("trained on", len(rows), "rows")
"""

TASK = """\
resources:
  gpus: 0
  cloud: onprem
  ttl: 30m
workdir: .
envs: {SEED: "42"}
setup: echo "setup saw $SEED" > setup.txt
run: python train.py && cat setup.txt outputs/result.txt
"""


def make_project(folder: Path) -> Path:
    """A user's project folder: code, a data file, a large folder that .gitignore leaves out."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.csv").write_text("x,y\n1,2\n3,4\n")
    (folder / "train.py").write_text(TRAIN)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "old.bin").write_bytes(os.urandom(50_000))
    (folder / ".gitignore").write_text("checkpoints/\n")
    (folder / "task.yaml").write_text(TASK)
    return folder


def lease_workspace(path: Path, machine_id: str) -> Path:
    """A lease workspace as the lease role leaves it (its env.sh), for a seeded machine."""
    (path / ".deepops").mkdir(parents=True, mode=0o700)
    (path / ".deepops" / "env.sh").write_text(
        f"export DEEPOPS_MACHINE={machine_id}\nexport DEEPOPS_WORKSPACE={path}\n"
        f"export DEEPOPS_LEASE_KEY=test-{machine_id}\nexport CUDA_VISIBLE_DEVICES=\n"
        'cd "$DEEPOPS_WORKSPACE" || return 1\n'
    )
    return path


def seed_lease(ledger: Any, mid: str, owner: str, team: str, host: str, workspace: Path) -> None:
    """A ready machine (tests/test_server_fixtures.seed_machine) whose lease is `workspace` on `host`."""
    from deepops_infra.ledger.schema import Machine
    from tests.test_server_fixtures import seed_machine

    seed_machine(ledger, mid, owner, team)
    with ledger.write() as session:
        m = session.get(Machine, mid)
        m.host, m.provider_refs = host, {"workspace": str(workspace)}


def _env(home: Path, user_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), HOME=str(user_home), USER=env.get("USER", "tester"))
    env["DEEPOPS_ENV_CACHE"] = os.environ["DEEPOPS_ENV_CACHE"]
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deepops, Path, dict[str, Any]]]:
    """One machine made from the task file (`up -f`): its workdir pushed, its setup run."""
    base = tmp_path_factory.mktemp("work")
    (base / "user").mkdir()
    deepops = Deepops(home=base / "home", env=_env(base / "home", base / "user"))
    deepops.write_pool(declared_pool(1))
    project = make_project(base / "project")
    up = deepops.run("up", "-f", str(project / "task.yaml"), "--name", "worker", "--yes", "--json", check=True)
    machine = json.loads(up.stdout)
    yield deepops, project, machine
    deepops.run("down", machine["id"], "--yes")
    end_processes_under(deepops.home)


def workspace(deepops: Deepops, machine: dict[str, Any]) -> Path:
    return deepops.home / "workspaces" / machine["id"]


@pytest.mark.ansible
def test_up_with_a_task_file_pushes_the_workdir_and_runs_setup(local: tuple[Deepops, Path, dict[str, Any]]) -> None:
    deepops, _, machine = local
    ws = workspace(deepops, machine)
    assert (ws / "data" / "train.csv").read_text() == "x,y\n1,2\n3,4\n"
    assert not (ws / "checkpoints").exists()  # .gitignore honoured
    assert (ws / "setup.txt").read_text() == "setup saw 42\n"  # setup ran after the push, with the envs


@pytest.mark.ansible
def test_exec_logs_jobs_and_sync(local: tuple[Deepops, Path, dict[str, Any]], tmp_path: Path) -> None:
    deepops, project, machine = local
    mid = machine["id"]
    started = deepops.run(
        "exec",
        "worker",
        "--env",
        "SEED=7",
        "--",
        "for i in 1 2 3; do echo line $i; sleep 0.2; done; python train.py",
        check=True,
    )
    job = started.stdout.strip()
    assert job.startswith("j-") and job in started.stderr
    followed = deepops.run("logs", mid, job, "-f", check=True)  # streams until the job ends
    assert followed.stdout.splitlines() == ["line 1", "line 2", "line 3", "trained on 2 rows"]
    failing = deepops.run(
        "exec", mid, "--", "python", "-c", "import sys; print(sys.argv[1]); sys.exit(4)", "a b", check=True
    )
    failed = failing.stdout.strip()
    wait_for(
        lambda: {j["id"]: j for j in deepops.json("jobs", mid)}[failed]["state"] == "exited", 120, "the job to end"
    )
    jobs = {j["id"]: j for j in deepops.json("jobs", mid)}
    assert (jobs[job]["state"], jobs[job]["exit_status"]) == ("exited", 0)
    assert jobs[failed]["exit_status"] == 4
    assert deepops.run("logs", mid, check=True).stdout == "a b\n"  # the latest job by default
    table = deepops.run("jobs", mid, check=True).stdout
    assert table.split()[:5] == ["JOB", "STATE", "EXIT", "STARTED", "COMMAND"] and failed in table

    down = deepops.run("sync", mid, str(tmp_path), "--down", "outputs/result.txt", check=True)
    assert (tmp_path / "result.txt").read_text() == "rows=2 seed=7\n", down.stderr
    (project / "data" / "extra.csv").write_text("more\n")
    deepops.run("sync", mid, str(project), check=True)
    assert (workspace(deepops, machine) / "data" / "extra.csv").read_text() == "more\n"

    missing = deepops.run("logs", mid, "j-00000000")
    assert_one_line_error(missing, "no job j-00000000")


@pytest.mark.ansible
def test_show_spec_makes_the_same_configuration_again(
    local: tuple[Deepops, Path, dict[str, Any]], tmp_path: Path
) -> None:
    deepops, _, machine = local
    spec = deepops.run("show", machine["id"], "--spec", check=True).stdout
    assert "image_pin: sha256:" in spec and "host: localhost" in spec
    (tmp_path / "spec.yaml").write_text(spec)
    plan = deepops.json("up", "-f", str(tmp_path / "spec.yaml"), "--dry-run")
    assert (plan["host"], plan["image_id"]) == ("localhost", machine["image_pin"])
    (tmp_path / "moved.yaml").write_text(spec.replace("image_pin: sha256:", "image_pin: sha256:0"))
    moved = deepops.run("up", "-f", str(tmp_path / "moved.yaml"), "--dry-run")
    assert_one_line_error(moved, "image_pin: image cpu-minimal now pins", "restore that pin")


@pytest.mark.ansible
def test_run_workdir_and_run_task_file(local: tuple[Deepops, Path, dict[str, Any]]) -> None:
    """`deepops run --workdir . -- python train.py` from the project folder, then `run -f`: the
    file's setup and run with its envs; each machine released after."""
    deepops, project, _ = local
    ran = deepops.run("run", "--ttl", "30m", "--workdir", ".", "--", "python", "train.py", cwd=project)
    assert (ran.returncode, ran.stdout) == (0, "trained on 2 rows\n"), ran.stderr
    assert "terminated after" in ran.stderr
    task = deepops.run("run", "-f", "task.yaml", cwd=project)
    assert task.returncode == 0, task.stderr
    assert task.stdout.splitlines() == ["trained on 2 rows", "setup saw 42", "rows=2 seed=42"]


# -- bad task files and workdirs: one line, exit 2, nothing written ------------------------------------


@pytest.mark.parametrize(
    ("args", "files", "fragments"),
    [
        (("up", "-f", "nope.yaml"), {}, ("-f nope.yaml: no such file",)),
        (("up", "-f", "t.yaml"), {"t.yaml": "resources:\n  gpu: 1\n"}, ("t.yaml:2", "resources.gpu: unknown key")),
        (("up", "-f", "t.yaml"), {"t.yaml": "resources:\n  ttl: soon\n"}, ("t.yaml:2", "ttl", "not a duration")),
        (("run", "-f", "t.yaml"), {"t.yaml": "workdir: nowhere\nrun: x\n"}, ("t.yaml:1", "is not a folder")),
        (("run", "-f", "t.yaml"), {"t.yaml": "envs: {DEEPOPS_X: 1}\nrun: x\n"}, ("t.yaml:1", "not a variable name")),
        (("run", "-f", "t.yaml"), {"t.yaml": "setup: x\n"}, ("give the command after --",)),
        (("run",), {}, ("give the command after --",)),
        (("up", "--workdir", "code.py"), {"code.py": ""}, ("--workdir", "is not a folder")),
        (("run", "--workdir", "big", "--", "true"), {"big/a.bin": "x" * 20_000}, ("holds 19.5 KB", "workdir.max_size")),
        (("exec", "m-00000000", "--", "true"), {}, ("no machine 'm-00000000'",)),
        (("exec", "m-00000000", "--env", "1A=x", "--", "true"), {}, ("--env '1A=x'",)),
        (("sync", "m-00000000", "missing"), {}, ("sync DIR:", "is not a folder")),
        (("jobs", "m-00000000"), {}, ("no machine 'm-00000000'",)),
    ],
)
def test_bad_task_files_and_workdirs_change_nothing(
    sqlite_deepops: Deepops, tmp_path: Path, args: tuple[str, ...], files: dict[str, str], fragments: tuple[str, ...]
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    config = tmp_path / "config.yaml"  # outside the home: nothing may appear there
    config.write_text("workdir:\n  max_size: 10K\n")
    sqlite_deepops.env["DEEPOPS_CONFIG"] = str(config)
    proc = sqlite_deepops.run(*args, cwd=work)
    assert_one_line_error(proc, *fragments)
    assert not sqlite_deepops.home.exists(), "nothing may be written for bad input"


def test_sync_and_jobs_on_an_ssh_pool_host(sqlite_deepops: Deepops, sshd: Any, tmp_path: Path) -> None:
    """The same commands on a lease of a real SSH pool host: rsync and jobs through the pool key's
    ssh to the lease's sshd."""
    deepops = sqlite_deepops
    deepops.env["HOME"] = str(tmp_path / "user")
    root = tmp_path / "remote"
    workspace = lease_workspace(root / "m-sshbox1", "m-sshbox1")
    deepops.write_pool(
        f"hosts:\n  - name: sshbox\n    connection: ssh\n    address: 127.0.0.1\n    port: {sshd.port}\n"
        f"    user: {sshd.user}\n    key: {sshd.key}\n    workspace_root: {root}\n"
        "    rates: {gpu_hour: 2, host_hour: 0.1}\n"
    )
    ledger = deepops.ledger()
    seed_lease(ledger, "m-sshbox1", "tester", "default", "sshbox", workspace)
    ledger.close()
    project = make_project(tmp_path / "project")
    deepops.run("sync", "m-sshbox1", str(project), check=True)
    assert (workspace / "data" / "train.csv").exists() and not (workspace / "checkpoints").exists()
    job = deepops.run("exec", "m-sshbox1", "--", "python3 train.py", check=True).stdout.strip()
    assert deepops.run("logs", "m-sshbox1", job, "-f", check=True).stdout == "trained on 2 rows\n"
    deepops.run("sync", "m-sshbox1", str(tmp_path), "--down", "outputs", check=True)
    assert (tmp_path / "outputs" / "result.txt").read_text() == "rows=2 seed=None\n"
    end_processes_under(tmp_path)
