"""Detached jobs in a machine: `deepops exec ID -- CMD`, `deepops logs ID [JOB] [-f]`, `deepops jobs ID`.

A job is a folder in the machine's workspace, `.deepops/jobs/<job id>/` (0700), holding the
command, its start time, its process id, its output (`output.log`, stdout and stderr together)
and, once it has ended, its exit status. The job runs in a session of its own (its pid is the
session's, so the whole job can be signalled), so it outlives
the connection that started it, and inside the lease (its environment and workspace), so that a
release ends it with the lease and the agent counts it as activity while it runs.

Everything here is a short POSIX shell script run inside the machine the way any command is
(`deepops ssh ID -- ...`), so jobs work on every target and in both local and team mode.
"""

import secrets
from dataclasses import dataclass

from deepops_infra.errors import UserError

JOBS_DIR = ".deepops/jobs"
NOT_FOUND = 3  # the exit status of the logs script for a machine without jobs or an unknown job

# $1 job id, $2 the command (a shell line); the envs are exported by the caller's prefix.
_START = r"""
set -e
j="$DEEPOPS_WORKSPACE/.deepops/jobs/$1"
mkdir -p "$DEEPOPS_WORKSPACE/.deepops/jobs"
mkdir -m 700 "$j"
printf '%s\n' "$2" > "$j/command"
date -u +%Y-%m-%dT%H:%M:%SZ > "$j/started"
nohup setsid sh -c '
  echo $$ > "$2/pid.tmp" && mv "$2/pid.tmp" "$2/pid"
  cd "$DEEPOPS_WORKSPACE"
  sh -c "$1" > "$2/output.log" 2>&1 < /dev/null
  echo $? > "$2/exit.tmp" && mv "$2/exit.tmp" "$2/exit"
' deepops-job "$2" "$j" < /dev/null > /dev/null 2>&1 &
i=0
while [ ! -f "$j/pid" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
echo "$1"
"""

# One line per job: id, state, exit status (or -), start time, first line of the command.
_LIST = r"""
cd "$DEEPOPS_WORKSPACE/.deepops/jobs" 2>/dev/null || exit 0
for j in */; do
  j=${j%/}
  [ -f "$j/pid" ] || continue
  if [ -f "$j/exit" ]; then state=exited; code=$(cat "$j/exit")
  elif kill -0 "$(cat "$j/pid")" 2>/dev/null; then state=running; code=-
  else state=lost; code=-
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$j" "$state" "$code" "$(cat "$j/started")" "$(head -n 1 "$j/command")"
done
"""

# $1 job id (empty: the latest), $2 "follow" to follow until the job ends, $3 a byte count: only
# the output's last bytes (the web page's log viewer).
_LOGS = r"""
cd "$DEEPOPS_WORKSPACE/.deepops/jobs" 2>/dev/null || { echo "no jobs in $DEEPOPS_MACHINE" >&2; exit 3; }
j=$1
if [ -z "$j" ]; then j=$(ls -t -- */started 2>/dev/null | head -n 1); j=${j%/started}; fi  # the last started
if [ -z "$j" ] || [ ! -d "$j" ]; then echo "no job ${1:-} in $DEEPOPS_MACHINE; see deepops jobs" >&2; exit 3; fi
[ -f "$j/output.log" ] || sleep 1
if [ "$2" = follow ] && [ ! -f "$j/exit" ]; then
  exec tail -n +1 -f --pid="$(cat "$j/pid")" "$j/output.log"
fi
if [ -n "${3:-}" ]; then exec tail -c "$3" "$j/output.log"; fi
exec cat "$j/output.log"
"""


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # running, exited, lost (ended without an exit status: killed with its lease)
    exit_status: int | None
    started_at: str
    command: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "exit_status": self.exit_status,
            "started_at": self.started_at,
            "command": self.command,
        }


def new_job_id() -> str:
    return "j-" + secrets.token_hex(4)


def check_job_id(job: str) -> str:
    if not (job.startswith("j-") and len(job) == 10 and all(c in "0123456789abcdef" for c in job[2:])):
        raise UserError(f"{job!r} is not a job ID (j- and 8 hex digits); see `deepops jobs ID`")
    return job


def exports(envs: dict[str, str]) -> str:
    """Shell lines exporting `envs` (each value quoted)."""
    import shlex

    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in envs.items())


def start_command(job: str, command: str, envs: dict[str, str] | None = None) -> list[str]:
    """The command (argv) that starts `command` as detached job `job` inside the machine."""
    if not command.strip():
        raise UserError("exec: give the command to run after --, e.g. deepops exec ID -- python train.py")
    return ["sh", "-c", exports(envs or {}) + _START, "deepops-exec", check_job_id(job), command]


def list_command() -> list[str]:
    return ["sh", "-c", _LIST, "deepops-jobs"]


def logs_command(job: str | None, follow: bool, last_bytes: int | None = None) -> list[str]:
    """The command that prints (or with `follow`, streams) a job's output; `last_bytes`: its end only."""
    tail = str(int(last_bytes)) if last_bytes else ""
    return ["sh", "-c", _LOGS, "deepops-logs", check_job_id(job) if job else "", "follow" if follow else "", tail]


def parse_list(output: str) -> list[Job]:
    jobs = []
    for line in output.splitlines():
        parts = line.split("\t", 4)
        if len(parts) != 5:
            continue
        job, state, code, started, command = parts
        jobs.append(Job(job, state, int(code) if code.lstrip("-").isdigit() else None, started, command))
    return sorted(jobs, key=lambda j: (j.started_at, j.id))
