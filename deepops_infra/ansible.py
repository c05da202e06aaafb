"""Running the project's playbooks with ansible-runner against pool hosts.

Everything Ansible writes on the controller stays under $DEEPOPS_HOME/ansible; SSH host keys are
trusted on first use and remembered in $DEEPOPS_HOME/known_hosts (never blindly ignored).
"""

import hashlib
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepops_infra import paths, playguard
from deepops_infra.config import Settings
from deepops_infra.errors import OperationError
from deepops_infra.paths import playbook, roles_dir
from deepops_infra.pool import PoolHost
from deepops_infra.progress import Progress, QuietProgress


@dataclass
class PlayResult:
    ok: bool
    status: str
    unreachable: bool = False
    failure: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # set_stats data (artifact_data)
    changed: int = 0

    def error(self, what: str) -> str:
        return f"{what}: {self.failure or self.status}"


def inventory_for(settings: Settings, hosts: list[PoolHost]) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for host in hosts:
        if host.connection == "local":
            entries[host.name] = {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "ansible_remote_tmp": str(settings.ansible_dir / "tmp"),
            }
        else:
            entry: dict[str, Any] = {
                "ansible_connection": "ssh",
                "ansible_host": host.address,
                "ansible_port": host.port,
                # An absolute `python:` in the pool is used as is; otherwise Ansible discovers one.
                "ansible_python_interpreter": host.python if host.python.startswith("/") else "auto_silent",
            }
            if host.user:
                entry["ansible_user"] = host.user
            if host.key:
                entry["ansible_ssh_private_key_file"] = str(Path(host.key).expanduser())
            entries[host.name] = entry
    return {"all": {"hosts": entries}}


def _control_dir(settings: Settings) -> Path:
    """Where SSH keeps its multiplexing sockets; a unix socket path must stay under ~100 bytes,
    so a deep DEEPOPS_HOME gets a short private directory in the temp dir instead."""
    preferred = settings.ansible_dir / "cp"
    if len(str(preferred)) <= 50:
        return preferred
    digest = hashlib.sha1(str(settings.home).encode()).hexdigest()[:10]
    short = paths.private_dir(Path(tempfile.gettempdir()) / f"deepops-cp-{os.getuid()}-{digest}")
    if short.stat().st_uid != os.getuid():  # the temp dir is shared: never put our sockets in another's folder
        raise PermissionError(f"{short} belongs to another user; remove it or use a shorter DEEPOPS_HOME")
    return short


def ansible_env(settings: Settings) -> dict[str, str]:
    base = settings.ansible_dir
    known_hosts = settings.home / "known_hosts"
    return {
        "ANSIBLE_HOME": str(base),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
        # The host-side code the roles' modules share (also run directly: providers/onprem/hostcall.py).
        "ANSIBLE_MODULE_UTILS": str(roles_dir() / "playbooks" / "module_utils"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(_control_dir(settings)),
        "ANSIBLE_SSH_ARGS": (
            f"-o ControlMaster=auto -o ControlPersist=60s -o BatchMode=yes "
            f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts} "
            "-o ConnectTimeout=10"
        ),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_FORCE_COLOR": "False",
    }


def _failure_message(event_data: dict[str, Any]) -> str:
    res = event_data.get("res") or {}
    msg = res.get("msg") or res.get("stderr") or res.get("module_stderr") or "failed"
    if isinstance(msg, list):
        msg = "; ".join(map(str, msg))
    text = " ".join(str(msg).split())
    task = event_data.get("task") or "task"
    return f"{task}: {text[:500]}"


def _ensure_ansible_on_path() -> None:
    """ansible-runner starts `ansible-playbook` from PATH; use the one installed beside us."""
    here = str(Path(sys.executable).parent)
    if (Path(here) / "ansible-playbook").exists() and here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


PLAY_NICENESS = "DEEPOPS_PLAY_NICENESS"  # set (by the team server's workers): plays yield the CPU

_LOW_PRIORITY_WRAPPER = """#!/bin/sh
# ansible-runner starts each play in a new session, and Linux (autogroup) schedules a session as
# one group whatever its processes' nice values: lower the group's priority too, then run the play.
echo "${{DEEPOPS_PLAY_NICENESS:-10}}" > /proc/self/autogroup 2>/dev/null
exec {real} "$@"
"""


def _low_priority_binary(settings: Settings, real: str) -> str | None:
    """A wrapper running `real` (ansible-playbook) at low CPU priority, when DEEPOPS_PLAY_NICENESS asks."""
    if not os.environ.get(PLAY_NICENESS):
        return None
    text = _LOW_PRIORITY_WRAPPER.format(real=shlex.quote(real))
    return _write_wrapper(settings.ansible_dir / "low-priority" / "ansible-playbook", text)


_GUARD_WRAPPER = """#!/bin/sh
# Plays die with the process that started them (deepops_infra/playguard.py).
exec {python} -I {guard} {real} "$@"
"""


def _guarded_binary(settings: Settings) -> str | None:
    """A wrapper running ansible-playbook through playguard (None: no ansible-playbook on PATH)."""
    real = shutil.which("ansible-playbook")
    if real is None:
        return None
    quoted = (shlex.quote(p) for p in (sys.executable, playguard.__file__, real))
    text = _GUARD_WRAPPER.format(**dict(zip(("python", "guard", "real"), quoted, strict=True)))
    return _write_wrapper(settings.ansible_dir / "guard" / "ansible-playbook", text)


def _write_wrapper(wrapper: Path, text: str) -> str:
    if not wrapper.exists() or wrapper.read_text() != text:
        paths.private_dir(wrapper.parent)
        tmp = wrapper.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o700)
        tmp.replace(wrapper)
    return str(wrapper)


class PlayCancelled(OperationError):
    """The play was stopped because the launch it belongs to was cancelled (PLAY_CANCEL said so)."""


# What a play asks, every few seconds while it runs, to learn that it must stop (the lifecycle sets
# it for a launch: its machine was released meanwhile). A context variable: per thread of launches.
PLAY_CANCEL: ContextVar[Callable[[], bool] | None] = ContextVar("deepops_play_cancel", default=None)


RUN_RETENTION_S = 7 * 86400  # how long a failed or interrupted play's artifacts are kept for debugging


def _scratch(settings: Settings, ident: str) -> Path:
    """The play's private_data_dir, ansible/runs/<ident>: every folder Ansible's scratch lives in is
    0700 (ansible-runner makes only the last of the folders it creates private). Runs older than
    RUN_RETENTION_S are pruned first (a successful run removes its own)."""
    runs = paths.private_dir(settings.ansible_dir / "runs")
    prune_runs(runs, time.time() - RUN_RETENTION_S)
    paths.private_dir(settings.ansible_dir / "tmp")
    return paths.private_dir(runs / ident / "artifacts").parent


def prune_runs(runs: Path, before: float) -> list[str]:
    """Remove the kept runs last touched before `before` (epoch seconds); returns their idents."""
    pruned = []
    for run in runs.iterdir() if runs.is_dir() else []:
        try:
            old = run.is_dir() and not run.is_symlink() and run.stat().st_mtime < before
        except FileNotFoundError:
            continue  # pruned at the same moment by another play
        if old:
            shutil.rmtree(run, ignore_errors=True)
            pruned.append(run.name)
    return pruned


def _tighten_tree(root: Path) -> None:
    """Folders 0700 and files 0600 under a kept run (ansible-runner leaves a few 0755/0644)."""
    for folder, _dirs, files in os.walk(root):
        paths.tighten(Path(folder), paths.PRIVATE_DIR)
        for name in files:
            if not (Path(folder) / name).is_symlink():
                paths.tighten(Path(folder) / name, paths.PRIVATE_FILE)


def run_playbook(
    settings: Settings,
    name: str,
    hosts: list[PoolHost],
    extravars: dict[str, Any],
    ident: str,
    progress: Progress | None = None,
) -> PlayResult:
    """Run roles/playbooks/<name>.yml; artifacts are kept only when the play fails."""
    import ansible_runner

    _ensure_ansible_on_path()
    progress = progress or QuietProgress()
    private_dir = _scratch(settings, ident)
    outcome: dict[str, Any] = {"failure": None, "unreachable": False, "stats": {}, "changed": 0}

    def on_event(event: dict[str, Any]) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            progress.detail(str(data.get("task", "")))
        elif kind == "runner_on_unreachable":
            outcome["unreachable"] = True
            outcome["failure"] = (
                outcome["failure"]
                or f"host {data.get('host')} is unreachable: "
                + " ".join(str((data.get("res") or {}).get("msg", "")).split())[:300]
            )
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            outcome["failure"] = outcome["failure"] or _failure_message(data)
        elif kind == "playbook_on_stats":
            outcome["stats"] = data.get("artifact_data") or {}
            outcome["changed"] = sum((data.get("changed") or {}).values())
        return False  # do not keep per-event files: ansible-runner still writes stdout

    guarded = _guarded_binary(settings)
    binary = _low_priority_binary(settings, guarded) if guarded else None
    binary = binary or guarded
    # With another binary ansible-runner passes no playbook itself: it goes first on the command line.
    where = {"binary": binary, "cmdline": shlex.quote(str(playbook(name)))} if binary else {}
    # The play's processes carry a token of their own, and the guard ends them with this process.
    token = secrets.token_hex(16)
    guard = {playguard.TOKEN_VAR: token, playguard.LAUNCHER_VAR: str(os.getpid())}
    cancel = PLAY_CANCEL.get()
    result = ansible_runner.run(
        private_data_dir=str(private_dir),
        playbook=str(playbook(name)),
        **where,
        inventory=inventory_for(settings, hosts),
        extravars=extravars,
        envvars=ansible_env(settings) | guard,
        event_handler=on_event,
        cancel_callback=cancel,
        quiet=True,
        rotate_artifacts=1,
    )
    if result.status == "canceled":
        # ansible-runner ends only the play's process group: its workers live in sessions of their own.
        playguard.end_tagged(token)
        if cancel is not None and cancel():
            raise PlayCancelled(f"{name}: stopped, the launch was cancelled")
        raise KeyboardInterrupt  # ansible-runner swallowed the user's Ctrl-C: hand it back
    ok = result.status == "successful" and result.rc == 0
    if ok:
        shutil.rmtree(private_dir, ignore_errors=True)
    else:
        _tighten_tree(private_dir)  # kept for debugging (pruned after RUN_RETENTION_S)
    return PlayResult(
        ok=ok,
        status=f"{result.status} (rc={result.rc})",
        unreachable=outcome["unreachable"],
        failure=outcome["failure"],
        stats=outcome["stats"],
        changed=outcome["changed"],
    )
