"""The lease steps run on a pool host without an Ansible play: the roles' host-side code
(roles/playbooks/module_utils/deepops_onprem_host.py and what it imports) sent to the host's
Python with a JSON request on stdin, in a local process or one SSH round trip.

An ansible-playbook start costs a second or more; this costs one Python start (plus one SSH
connection). The call is guarded like a play (deepops_infra/playguard.py: it dies with the process
that started it) and stops when the launch is cancelled (ansible.PLAY_CANCEL).
"""

import contextlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from functools import cache
from typing import Any

from deepops_infra import playguard
from deepops_infra.config import Settings
from deepops_infra.errors import OperationError
from deepops_infra.paths import roles_dir
from deepops_infra.pool import PoolHost

# In dependency order: each is loaded as a module of that name before the next.
MODULES = ("deepops_lease_marker", "deepops_gpu_probe", "deepops_envcache", "deepops_onprem_host")

BOOT = (
    "import json, sys, types\n"
    "request = json.loads(sys.stdin.read())\n"
    "for name, source in request['modules']:\n"
    "    module = types.ModuleType(name)\n"
    "    module.__file__ = '<deepops>/' + name + '.py'\n"
    "    sys.modules[name] = module\n"
    "    exec(compile(source, module.__file__, 'exec'), module.__dict__)\n"
    "sys.exit(sys.modules['deepops_onprem_host'].serve(request['op'], request['args']))\n"
)


class HostUnreachable(OperationError):
    """SSH could not reach the host: nothing was done there."""


@cache
def _sources() -> tuple[tuple[str, str], ...]:
    folder = roles_dir() / "playbooks" / "module_utils"
    return tuple((name, (folder / f"{name}.py").read_text()) for name in MODULES)


def _argv(settings: Settings, host: PoolHost, ssh: list[str]) -> list[str]:
    if host.connection == "local":
        return [sys.executable, "-c", BOOT]
    target = f"{host.user}@{host.address}" if host.user else host.address
    return [*ssh, *reuse(settings), "-o", "ConnectTimeout=10", target, shlex.join([host.python, "-c", BOOT])]


def reuse(settings: Settings) -> list[str]:
    """SSH options keeping one connection per host for a minute (as Ansible does), reused by a
    lease's steps, its check-in and its release: each new connection costs a handshake."""
    from deepops_infra.ansible import _control_dir
    from deepops_infra.paths import private_dir

    control = private_dir(_control_dir(settings))
    return ["-o", "ControlMaster=auto", "-o", "ControlPersist=60s", "-o", f"ControlPath={control}/%r@%h:%p"]


def call(settings: Settings, host: PoolHost, ssh: list[str], op: str, args: dict[str, Any]) -> Any:
    """Run `op` of deepops_onprem_host on the host; its result, or OperationError with its reason."""
    from deepops_infra.ansible import PLAY_CANCEL, PlayCancelled

    request = json.dumps({"modules": _sources(), "op": op, "args": args})
    token = secrets.token_hex(16)
    env = dict(os.environ, **{playguard.TOKEN_VAR: token, playguard.LAUNCHER_VAR: str(os.getpid())})
    command = _argv(settings, host, ssh)
    command[0] = shutil.which(command[0]) or command[0]  # the guard execs a path
    argv = [sys.executable, "-I", playguard.__file__, *command]
    cancel = PLAY_CANCEL.get()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = _wait(proc, request, cancel)
    except BaseException:
        proc.kill()
        playguard.end_tagged(token)
        raise
    if out is None:
        playguard.end_tagged(token)
        raise PlayCancelled(f"{op}: stopped, the launch was cancelled")
    lines = out.strip().splitlines()
    if proc.returncode == 255 and host.connection != "local" and not lines:
        raise HostUnreachable(f"host {host.name} is unreachable: {' '.join(err.split())[:300]}")
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if proc.returncode != 0 or not isinstance(answer, dict):
        raise OperationError(f"{op} on {host.name} failed: {' '.join(err.split())[-400:] or f'exit {proc.returncode}'}")
    if answer.get("error"):
        raise OperationError(answer["error"])
    return answer.get("result")


def _wait(proc: subprocess.Popen, request: str, cancel: Any) -> tuple[str | None, str]:
    """The process' output once it ends; (None, "") when the launch was cancelled meanwhile."""
    if cancel is None:
        return proc.communicate(request)
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # it ended before reading: its status and stderr say why
        proc.stdin.write(request)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.stdin = None
    while True:
        try:
            return proc.communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
            if cancel():
                proc.kill()
                proc.communicate()
                return None, ""
