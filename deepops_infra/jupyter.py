"""Jupyter in a machine: `deepops up --jupyter` and `deepops jupyter ID`.

In the machine, `ensure_command()` finds the lease's running Jupyter server or starts one as a
detached job (jobs.py) from the image's pinned environment: `jupyter server --no-browser --ip
127.0.0.1` on a free port, its token read from `.deepops/jupyter/token` (0600, via
JUPYTER_TOKEN_FILE: never on a command line or in the log) and its runtime files in
`.deepops/jupyter/runtime` (JUPYTER_RUNTIME_DIR), where the agent finds it and counts its kernels
as activity. It prints the server's port and token as one JSON line.

On this computer, a detached `ssh -N -L LOCAL:127.0.0.1:PORT` (the path of `deepops ssh`, local or
team mode) carries the port; its pid is recorded in `$DEEPOPS_HOME/jupyter/<machine>.json` so that
`deepops down` (or `deepops jupyter ID --stop`) ends it.
"""

import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

NO_JUPYTER = 4  # exit status of the script: the machine's environment has no `jupyter`
NOT_STARTED = 5  # the server's job ended or did not write its runtime file in time

# The runtime file (jpserver-PID.json) of a live server, as {"port", "token", "pid"}; exit 1 if none.
_FIND = r"""
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "jpserver-*.json")), key=os.path.getmtime, reverse=True):
    try:
        with open(path) as f:
            info = json.load(f)
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        continue
    print(json.dumps({"port": int(info["port"]), "token": info.get("token") or "", "pid": int(info["pid"])}))
    sys.exit(0)
sys.exit(1)
"""

# $1 job id, $2 the job script (jobs.py), $3 the find script above. The job inherits the
# JUPYTER_* variables (root, e.g. in a container, needs --allow-root).
_ENSURE = r"""
set -u
d="$DEEPOPS_WORKSPACE/.deepops/jupyter"
command -v jupyter >/dev/null 2>&1 || { echo "no jupyter in $DEEPOPS_MACHINE's environment" >&2; exit 4; }
py=python3; [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ] && py=$VIRTUAL_ENV/bin/python
umask 077
mkdir -p "$d/runtime" && chmod 700 "$d" || exit 5
"$py" -c "$3" "$d/runtime" && exit 0
"$py" -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))' > "$d/token.tmp"
mv "$d/token.tmp" "$d/token"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JUPYTER_RUNTIME_DIR="$d/runtime" JUPYTER_TOKEN_FILE="$d/token"
cmd="jupyter server --no-browser --ip 127.0.0.1 --port $port"
[ "$(id -u)" = 0 ] && cmd="$cmd --allow-root"
sh -c "$2" deepops-exec "$1" "$cmd" > /dev/null || exit 5
i=0
while [ $i -lt 900 ]; do
  "$py" -c "$3" "$d/runtime" && exit 0
  [ -f "$DEEPOPS_WORKSPACE/.deepops/jobs/$1/exit" ] && break
  sleep 0.2; i=$((i + 1))
done
out=$(tail -n 3 "$DEEPOPS_WORKSPACE/.deepops/jobs/$1/output.log" 2>/dev/null | tr '\n' ' ')
echo "jupyter did not start (job $1): $out" >&2
exit 5
"""


@dataclass(frozen=True)
class Server:
    """A Jupyter server in a machine: its port there, its token, its pid there."""

    port: int
    token: str
    pid: int


def ensure_command(job: str) -> list[str]:
    """The command (argv, run in the machine) that prints the running server, starting it first
    as job `job` when there is none."""
    from deepops_infra.jobs import start_command

    job_script = start_command(job, "jupyter server")[2]  # the script; the command is made in the machine
    return ["sh", "-c", _ENSURE, "deepops-jupyter", job, job_script, _FIND]


def parse_server(output: str) -> Server | None:
    for line in reversed(output.strip().splitlines()):
        try:
            data = json.loads(line)
            return Server(port=int(data["port"]), token=str(data["token"]), pid=int(data["pid"]))
        except (ValueError, KeyError, TypeError):
            continue
    return None


# -- the local forward ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """A detached `ssh -N -L` on this computer, carrying local_port to the server's port."""

    machine: str
    pid: int
    local_port: int
    remote_port: int

    def url(self, token: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.local_port}{path}?token={token}"


def forwards_dir(home: Path) -> Path:
    return home / "jupyter"


def record_path(home: Path, machine_id: str) -> Path:
    return forwards_dir(home) / f"{machine_id}.json"


def free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save(home: Path, forward: Forward) -> None:
    folder = forwards_dir(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = record_path(home, forward.machine)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(forward), f)
    os.replace(tmp, path)


def load(home: Path, machine_id: str) -> Forward | None:
    try:
        data = json.loads(record_path(home, machine_id).read_text())
        return Forward(**{k: data[k] for k in ("machine", "pid", "local_port", "remote_port")})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cmdline(pid: int) -> list[str]:
    """The process's arguments ([] when it is gone); /proc where there is one, else ps."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return []
    except OSError:
        return []
    import subprocess

    proc = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return proc.stdout.split()


def is_ours(forward: Forward) -> bool:
    """The recorded pid is still our forward (ssh -N -L <local port>:...): a pid reused by another
    process is never signalled."""
    args = _cmdline(forward.pid)
    spec = f"{forward.local_port}:127.0.0.1:{forward.remote_port}"
    return bool(args) and "ssh" in Path(args[0]).name and "-N" in args and spec in args


def stop(home: Path, machine_id: str) -> bool:
    """End the machine's forward (its whole process group: ssh and its ProxyCommand) and forget
    it; True when one was running."""
    forward = load(home, machine_id)
    if forward is None:
        return False
    running = is_ours(forward)
    if running:
        try:
            if os.getpgid(forward.pid) == forward.pid:  # started in a session of its own
                os.killpg(forward.pid, signal.SIGTERM)
            else:
                os.kill(forward.pid, signal.SIGTERM)
        except ProcessLookupError:
            running = False
    record_path(home, machine_id).unlink(missing_ok=True)
    (forwards_dir(home) / f"{machine_id}.log").unlink(missing_ok=True)
    return running
