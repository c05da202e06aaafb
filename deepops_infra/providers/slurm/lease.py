"""What a lease is on a Slurm cluster: one batch job holding an allocation, and the pieces that
mark it as ours (job name and comment), choose its GPUs (gres) and hold it (the batch script)."""

import math
import shlex
from datetime import timedelta
from typing import TYPE_CHECKING

from deepops_infra import tags as tag_keys
from deepops_infra.pool_clusters import PoolCluster

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine

JOB_PREFIX = "deepops-"
RUNNING_STATES = ("RUNNING",)
WAITING_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED")


def comment(machine: "Machine", installation_id: str) -> str:
    """The job's --comment: deepops' tags as `key=value` pairs (what discover() reads back). The
    expiry is left out: Slurm's own time limit is the lease's cap, and `extend` moves that."""
    pairs = tag_keys.machine_tags(machine, installation_id)
    return ",".join(f"{k}={v}" for k, v in pairs.items() if k != tag_keys.EXPIRES_AT)


def parse_comment(text: str) -> dict[str, str]:
    """Tags from a job comment; {} unless it is a deepops comment."""
    found = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.startswith("deepops-"):
            found[key.strip()] = value.strip()
    return found


def time_limit_minutes(ttl: timedelta, grace: timedelta) -> int:
    """Slurm's --time for a lease: its TTL plus the dead-man grace, whole minutes rounded up."""
    return max(1, math.ceil((ttl + grace).total_seconds() / 60))


def gres(gpus: int, gres_type: str | None) -> list[str]:
    if gpus <= 0:
        return []
    return [f"--gres=gpu:{gres_type}:{gpus}" if gres_type else f"--gres=gpu:{gpus}"]


def sbatch_options(
    cluster: PoolCluster,
    *,
    machine_id: str,
    comment_text: str,
    partition: str,
    team: str,
    minutes: int,
    gpus: int,
    gres_type: str | None,
) -> list[str]:
    options = [
        f"--job-name={JOB_PREFIX}{machine_id}",
        f"--comment={comment_text}",
        f"--partition={partition}",
        f"--time={minutes}",
        "--nodes=1",
        "--ntasks=1",
        "--output=/dev/null",
        "--chdir=/tmp",
        *gres(gpus, gres_type),
    ]
    account = cluster.account_for(team)
    if account.account:
        options.append(f"--account={account.account}")
    if account.qos:
        options.append(f"--qos={account.qos}")
    return options


def holder_script(workspace: str, machine_id: str, installation_id: str, python: str) -> str:
    """The batch script: make the workspace and its marker, write env.sh, then hold the allocation;
    once `configure` has written the agent's config, run the agent inside the allocation."""
    ws = workspace if not workspace.startswith("~/") else "$HOME/" + workspace[2:]
    ws_quoted = ws if ws.startswith("$HOME/") else shlex.quote(ws)
    if ws.startswith("$HOME/"):
        ws_quoted = '"$HOME"/' + shlex.quote(ws[len("$HOME/") :])
    return f"""#!/bin/bash
# deepops lease {machine_id}: holds this allocation until cancelled or its time limit.
umask 077
ws={ws_quoted}
mkdir -p "$ws/.deepops" || exit 1
cat > "$ws/.deepops/lease.json.tmp" <<EOF
{{"machine_id": "{machine_id}", "installation_id": "{installation_id}", "job_id": "$SLURM_JOB_ID", \
"gpus": "${{SLURM_JOB_GPUS:-}}", "node": "$(hostname)"}}
EOF
mv "$ws/.deepops/lease.json.tmp" "$ws/.deepops/lease.json"
cat > "$ws/.deepops/env.sh" <<EOF
export DEEPOPS_MACHINE={machine_id}
export DEEPOPS_WORKSPACE="$ws"
export DEEPOPS_GPU_INDEXES="${{SLURM_JOB_GPUS:-}}"
export CUDA_VISIBLE_DEVICES="\\${{CUDA_VISIBLE_DEVICES-${{CUDA_VISIBLE_DEVICES:-}}}}"
if [ -d "\\$DEEPOPS_WORKSPACE/env/bin" ]; then
  export VIRTUAL_ENV="\\$DEEPOPS_WORKSPACE/env"
  export PATH="\\$VIRTUAL_ENV/bin:\\$PATH"
fi
cd "\\$DEEPOPS_WORKSPACE" || return 1
EOF
agent="$ws/.deepops/agent"
while :; do
  if [ -f "$agent/config.json" ] && [ ! -e "$agent/.started" ]; then
    touch "$agent/.started"
    DEEPOPS_MACHINE={machine_id} {shlex.quote(python)} "$agent/deepops_agent.py" --config "$agent/config.json" run \
      >> "$agent/agent.log" 2>&1 &
  fi
  sleep 1
done
"""
