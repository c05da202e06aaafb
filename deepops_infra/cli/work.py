"""Working on a machine: bring code (`--workdir` on up/run, `deepops sync`), tasks from a file
(`-f task.yaml` on up/run), detached jobs (`deepops exec`, `logs`, `jobs`).

Every command in a machine goes the way `deepops ssh` goes (cli/connect.py: the lease's sshd,
reached locally, over the pool key, or through the team server), and rsync's remote shell is ssh
with the same host options, so all of it works alike in local and team mode. See
docs/working-on-a-machine.md.
"""

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepops_infra.cli.common import info, print_json, print_table

if TYPE_CHECKING:
    import subprocess

    from deepops_infra.taskfile import Task
    from deepops_infra.workdir import Upload

Workdir = Annotated[
    Path | None,
    typer.Option(
        "--workdir", help="Copy this folder into the machine's workspace once it is ready (honours .gitignore)."
    ),
]
TaskFile = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="A task file (YAML): resources, workdir, envs, setup, run; options override it."),
]
Ref = Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")]
_ENV = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
SSH_FAILED = 255  # ssh's own exit status: the connection, not the command, failed


# -- up / run: what to do once the machine is ready ----------------------------------------------------


@dataclass(frozen=True)
class Work:
    """What `up`/`run` do in a ready machine: push the workdir, then run the setup with the envs."""

    task: "Task | None" = None
    upload: "Upload | None" = None
    envs: dict[str, str] = field(default_factory=dict)

    def command(self, given: list[str] | None) -> list[str]:
        """What `run` runs: the command given after --, else the task file's `run`; the envs exported."""
        if given:  # one word is a shell line, as with `deepops ssh ID -- 'a; b'`
            return _with_envs(_line(given), self.envs) if self.envs or len(given) == 1 else given
        if self.task is not None and self.task.run:
            return _with_envs(self.task.run, self.envs)
        from deepops_infra.errors import UserError

        raise UserError("run: give the command after --, e.g. deepops run -- python train.py (or `run:` in -f FILE)")

    def after_ready(self, machine_id: str) -> None:
        """Push the workdir, run the setup; an OperationError (the machine stays up) if either fails."""
        if self.upload is not None:
            push(machine_id, self.upload)
        if self.task is not None and self.task.setup:
            info(f"setup in {machine_id}: {self.task.setup.splitlines()[0]}")
            status = run_in(machine_id, _with_envs(self.task.setup, self.envs)).returncode
            if status != 0:
                from deepops_infra.errors import OperationError

                raise OperationError(
                    f"setup in {machine_id} failed (exit {status}); the machine is up: "
                    f"`deepops ssh {machine_id}` to look, `deepops down {machine_id}` to end it"
                )


def prepare(order: Any, task_file: Path | None, workdir: Path | None) -> tuple[Any, Work]:
    """The order with the task file's options under the command line's, and the work to do once
    ready; everything validated and measured here, before anything is requested or written."""
    from deepops_infra.cli.common import settings
    from deepops_infra.workdir import max_bytes, measure

    task = None
    if task_file is not None:
        from deepops_infra.taskfile import load_task

        task = load_task(task_file)
        order = _merged(order, task)
    folder = workdir if workdir is not None else (task.workdir if task else None)
    upload = measure(folder.expanduser().resolve(), max_bytes(settings())) if folder is not None else None
    return order, Work(task=task, upload=upload, envs=dict(task.envs) if task else {})


def _merged(order: Any, task: "Task") -> Any:
    """Command-line options over the file's; the file's image pin holds for the file's image only."""
    from deepops_infra.service.machines import MachineOrder
    from deepops_infra.taskfile import merged

    given = order.options()
    options = asdict(merged(task, given))
    same_image = given.image is None or given.image == task.options.image
    options["image_pin"] = given.image_pin or (task.image_pin if same_image else None)
    return MachineOrder(**options, like=order.like)


def _line(command: list[str]) -> str:
    from deepops_infra.cli.connect import remote_command

    return remote_command(command)


def _with_envs(line: str, envs: dict[str, str]) -> list[str]:
    from deepops_infra.jobs import exports

    return ["sh", "-c", exports(envs) + line]


# -- in the machine: the path of `deepops ssh` ---------------------------------------------------------


def route(machine_id: str) -> Any:
    """The way into the machine that `deepops ssh` takes (cli/connect.py's `route`: .home, .server,
    .endpoint); found before anything is written."""
    from deepops_infra.cli import connect

    find = getattr(connect, "route", None) or connect.target  # type: ignore[attr-defined]
    return find(machine_id)


def run_in(machine_id: str, argv: list[str], capture: bool = False) -> "subprocess.CompletedProcess[str]":
    """Run `argv` in the machine as `deepops ssh ID -- ...` does (local or team mode); stdout is
    captured with `capture`, stderr always (and passed on unless it says why the command failed)."""
    import subprocess

    from deepops_infra.cli.connect import ssh_argv

    to = route(machine_id)
    proc = subprocess.run(
        ssh_argv(to, argv, [], False, False),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode == SSH_FAILED:
        from deepops_infra.errors import OperationError

        raise OperationError(f"cannot reach {to.endpoint.id}: {' '.join(proc.stderr.split())[:300] or 'ssh failed'}")
    return proc


@contextmanager
def rsync_shell(machine_id: str) -> Iterator[tuple[str, str]]:
    """(rsync's -e command, the host alias) for the machine: ssh with the machine's own host
    block (`deepops ssh-config`'s) in a private temporary config file."""
    import shlex
    import tempfile

    from deepops_infra.connect import sshconfig

    to = route(machine_id)
    with tempfile.TemporaryDirectory(prefix="deepops-sync-") as folder:
        config = Path(folder) / "config"
        config.write_text(sshconfig.host_blocks(to.home, to.server, [to.endpoint]))
        config.chmod(0o600)
        yield f"ssh -F {shlex.quote(str(config))}", to.endpoint.alias


def push(machine_id: str, upload: "Upload") -> None:
    from deepops_infra.workdir import human, push_argv, run_rsync

    with rsync_shell(machine_id) as (rsh, alias):
        run_rsync(push_argv(rsh, upload, f"{alias}:./"), f"copying {upload.source} to {machine_id}")
    info(f"copied {upload.source} ({human(upload.total_bytes)}) into {machine_id}'s workspace")


# -- commands --------------------------------------------------------------------------------------------


def sync(
    machine_ref: Ref,
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Local folder (default: this one).")] = Path("."),
    down: Annotated[
        str | None,
        typer.Option("--down", help="Bring PATH (a file or folder in the workspace) back into DIR instead."),
    ] = None,
) -> None:
    """Push DIR into the machine's workspace again (only what changed), or pull results back with --down."""
    from deepops_infra.errors import UserError

    local = folder.expanduser().resolve()
    if down is None:
        from deepops_infra.cli.common import settings
        from deepops_infra.workdir import max_bytes, measure

        upload = measure(local, max_bytes(settings()), option="sync DIR")
        push(machine_ref, upload)
        return
    if not down.strip() or "\0" in down:
        raise UserError("--down: give a path in the machine's workspace, e.g. --down outputs/model.pt")
    if not local.is_dir():
        raise UserError(f"sync --down: {local} is not a folder; give the folder to copy into")
    from deepops_infra.workdir import pull_argv, run_rsync

    with rsync_shell(machine_ref) as (rsh, alias):
        run_rsync(pull_argv(rsh, f"{alias}:{down}", local), f"copying {down} from {machine_ref}")
    info(f"copied {down} from {machine_ref} into {local}")


def _envs(pairs: list[str] | None) -> dict[str, str]:
    from deepops_infra.errors import UserError

    envs = {}
    for pair in pairs or []:
        match = _ENV.fullmatch(pair)
        if match is None or match[1].startswith("DEEPOPS_") or "\0" in pair:
            raise UserError(f"--env {pair!r}: give NAME=VALUE (NAME: letters, digits, _; not DEEPOPS_*)")
        envs[match[1]] = match[2]
    return envs


def exec_(
    machine_ref: Ref,
    command: Annotated[list[str], typer.Argument(help="Command to start (after --): one word is a shell line.")],
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE for the job (repeatable).")] = None,
) -> None:
    """Start COMMAND as a detached job in the machine's workspace and print its job ID."""
    from deepops_infra import jobs

    job = jobs.new_job_id()
    argv = jobs.start_command(job, _line(command), _envs(env))
    proc = run_in(machine_ref, argv, capture=True)
    started = proc.stdout.strip()
    if proc.returncode != 0 or started != job:
        from deepops_infra.errors import OperationError

        raise OperationError(f"the job did not start (exit {proc.returncode}): {' '.join(proc.stderr.split())[:300]}")
    sys.stdout.write(job + "\n")
    info(f"started {job} in {machine_ref}: `deepops logs {machine_ref} {job} -f` follows it")


def logs(
    machine_ref: Ref,
    job: Annotated[str | None, typer.Argument(metavar="[JOB]", help="Job ID (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
) -> None:
    """Print a job's output (stdout and stderr together); -f follows it until the job ends."""
    from deepops_infra import jobs

    sys.stdout.flush()
    proc = run_in(machine_ref, jobs.logs_command(job, follow))
    if proc.returncode == jobs.NOT_FOUND:
        from deepops_infra.errors import NotFoundError

        raise NotFoundError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"no job {job}")
    sys.stderr.write(proc.stderr)
    raise typer.Exit(proc.returncode)


JOB_COLUMNS = ["JOB", "STATE", "EXIT", "STARTED", "COMMAND"]


def jobs_(machine_ref: Ref, json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The machine's jobs: state (running, exited, lost), exit status, start time, command."""
    from deepops_infra import jobs

    proc = run_in(machine_ref, jobs.list_command(), capture=True)
    if proc.returncode != 0:
        from deepops_infra.errors import OperationError

        raise OperationError(f"listing jobs failed (exit {proc.returncode}): {' '.join(proc.stderr.split())[:300]}")
    found = jobs.parse_list(proc.stdout)
    if json_out:
        print_json([j.to_json() for j in found])
    elif not found:
        info(f"no jobs in {machine_ref}; start one with `deepops exec {machine_ref} -- CMD`")
    else:
        rows = [
            [j.id, j.state, "-" if j.exit_status is None else str(j.exit_status), j.started_at, j.command]
            for j in found
        ]
        print_table(JOB_COLUMNS, rows)


def register(app: typer.Typer) -> None:
    app.command(name="exec")(exec_)  # options before `--`; everything after it is the command
    app.command()(logs)
    app.command(name="jobs")(jobs_)
    app.command()(sync)
