"""Running the project's playbooks with ansible-runner against pool hosts.

Everything Ansible writes on the controller stays under $DEEPOPS_HOME/ansible; SSH host keys are
trusted on first use and remembered in $DEEPOPS_HOME/known_hosts (never blindly ignored).
"""

import hashlib
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepops_infra.config import Settings
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
    short = Path(tempfile.gettempdir()) / f"deepops-cp-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short


def ansible_env(settings: Settings) -> dict[str, str]:
    base = settings.ansible_dir
    known_hosts = settings.home / "known_hosts"
    return {
        "ANSIBLE_HOME": str(base),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
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


def _low_priority_binary(settings: Settings) -> str | None:
    """A wrapper running ansible-playbook at low CPU priority, when DEEPOPS_PLAY_NICENESS asks."""
    real = shutil.which("ansible-playbook")
    if not os.environ.get(PLAY_NICENESS) or real is None:
        return None
    text = _LOW_PRIORITY_WRAPPER.format(real=shlex.quote(real))
    wrapper = settings.ansible_dir / "low-priority" / "ansible-playbook"
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = wrapper.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o700)
        tmp.replace(wrapper)
    return str(wrapper)


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
    private_dir = settings.ansible_dir / "runs" / ident
    private_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (settings.ansible_dir / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
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

    low_priority = _low_priority_binary(settings)
    # With another binary ansible-runner passes no playbook itself: it goes first on the command line.
    where = {"binary": low_priority, "cmdline": shlex.quote(str(playbook(name)))} if low_priority else {}
    result = ansible_runner.run(
        private_data_dir=str(private_dir),
        playbook=str(playbook(name)),
        **where,
        inventory=inventory_for(settings, hosts),
        extravars=extravars,
        envvars=ansible_env(settings),
        event_handler=on_event,
        quiet=True,
        rotate_artifacts=1,
    )
    if result.status == "canceled":
        raise KeyboardInterrupt  # ansible-runner swallowed the user's Ctrl-C: hand it back
    ok = result.status == "successful" and result.rc == 0
    if ok:
        shutil.rmtree(private_dir, ignore_errors=True)
    return PlayResult(
        ok=ok,
        status=f"{result.status} (rc={result.rc})",
        unreachable=outcome["unreachable"],
        failure=outcome["failure"],
        stats=outcome["stats"],
        changed=outcome["changed"],
    )
