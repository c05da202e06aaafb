"""Slurm's own commands (`squeue --json`, `sinfo --json`, `sbatch`, `scancel`, `scontrol`), run on
the cluster's controller side: on this machine (`connection: local`) or on its login node over SSH.

Only the CLI is used (pyslurm needs the newest Slurm's headers; slurmrestd needs a token setup),
with --json where Slurm has it. 22.05's JSON schema differs from 23.02+: readers here accept both
shapes for the few fields deepops needs.
"""

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepops_infra.errors import OperationError
from deepops_infra.pool_clusters import PoolCluster

TIMEOUT = 60.0
GRES_IDX = re.compile(r"gpu((?::[^:(]+)*)\(IDX:([^)]*)\)")  # gpu[:type][:count](IDX:0-1,3)


class SlurmError(OperationError):
    """A Slurm command failed; the message is Slurm's own (one line)."""


@dataclass(frozen=True)
class Job:
    """The facts deepops reads from one `squeue --json` job."""

    id: str
    name: str
    comment: str
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, FAILED, ...
    reason: str
    user: str
    partition: str
    nodes: str
    start: datetime | None
    end: datetime | None
    submit: datetime | None
    priority: int
    time_limit_minutes: int | None
    gpu_indexes: tuple[int, ...]
    gres_type: str | None

    @property
    def active(self) -> bool:
        return self.state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED")


def _number(value: Any) -> int | None:
    """A 22.05 plain number, or a 23.02+ {"set": bool, "number": N}."""
    if isinstance(value, dict):
        return int(value["number"]) if value.get("set") and not value.get("infinite") else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime | None:
    seconds = _number(value)
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _state(value: Any) -> str:
    if isinstance(value, list):  # 23.02+: a list of flags, the base state first
        return str(value[0]) if value else "UNKNOWN"
    return str(value or "UNKNOWN")


def expand_indexes(text: str) -> list[int]:
    """`0-1,3` -> [0, 1, 3]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last or first).isdigit():
            continue  # `N/A`: none
        out += range(int(first), int(last or first) + 1)
    return out


def gres_gpus(details: list[str]) -> tuple[tuple[int, ...], str | None]:
    """The GPU indices (and gres type) from `gres_detail`, e.g. ['gpu:a100:2(IDX:0-1)']."""
    indexes: list[int] = []
    kind = None
    for detail in details or []:
        for match in GRES_IDX.finditer(detail):
            names = [p for p in match.group(1).split(":") if p and not p.isdigit()]
            kind = kind or (names[0] if names else None)
            indexes += expand_indexes(match.group(2))
    return tuple(indexes), kind


def job_of(raw: dict[str, Any]) -> Job:
    indexes, kind = gres_gpus(raw.get("gres_detail") or [])
    return Job(
        id=str(raw["job_id"]),
        name=str(raw.get("name") or ""),
        comment=str(raw.get("comment") or ""),
        state=_state(raw.get("job_state")),
        reason=str(raw.get("state_reason") or "None"),
        user=str(raw.get("user_name") or ""),
        partition=str(raw.get("partition") or ""),
        nodes=str(raw.get("nodes") or ""),
        start=_time(raw.get("start_time")),
        end=_time(raw.get("end_time")),
        submit=_time(raw.get("submit_time")),
        priority=_number(raw.get("priority")) or 0,
        time_limit_minutes=_number(raw.get("time_limit")),
        gpu_indexes=indexes,
        gres_type=kind,
    )


class Slurm:
    """The commands of one cluster entry."""

    def __init__(self, cluster: PoolCluster, known_hosts: Path | None = None) -> None:
        self.cluster = cluster
        self.known_hosts = known_hosts

    def ssh_options(self) -> list[str]:
        """ssh and its options for the login node, without the target."""
        c = self.cluster
        argv = ["ssh", "-p", str(c.port), "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if c.key:
            argv += ["-i", str(Path(c.key).expanduser())]
        return argv

    def ssh_prefix(self, tty: bool = False) -> list[str]:
        """The ssh argv to the login node (empty for a local cluster)."""
        c = self.cluster
        if c.connection == "local":
            return []
        return [*self.ssh_options(), *(["-t"] if tty else []), f"{c.user}@{c.address}" if c.user else c.address]

    def argv(self, command: list[str], tty: bool = False) -> tuple[list[str], dict[str, str] | None]:
        """(argv, env) that run a Slurm command on the controller side."""
        conf = self.cluster.slurm_conf
        if self.cluster.connection == "local":
            env = {**os.environ, "SLURM_CONF": conf} if conf else None
            return command, env
        remote = (["env", f"SLURM_CONF={conf}"] if conf else []) + command
        return [*self.ssh_prefix(tty), shlex.join(remote)], None

    def run(self, command: list[str], stdin: str | None = None, timeout: float = TIMEOUT) -> str:
        argv, env = self.argv(command)
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"{self.cluster.name}: {command[0]}: {exc}") from None
        if proc.returncode != 0:
            message = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
            raise SlurmError(f"{self.cluster.name}: {message[:400]}")
        return proc.stdout

    def json(self, command: list[str]) -> dict[str, Any]:
        out = self.run(command)
        try:
            return json.loads(out)
        except ValueError:
            raise SlurmError(f"{self.cluster.name}: {command[0]} --json printed no JSON: {out[:200]!r}") from None

    # -- reading --------------------------------------------------------------------------------

    def jobs(self, job_ids: list[str] | None = None, all_states: bool = False) -> list[Job]:
        """Jobs in the controller's memory (ended ones stay there for MinJobAge when `all_states`)."""
        command = ["squeue", "--json"]
        if all_states:
            command.append("--states=all")
        if job_ids:
            command.append("--jobs=" + ",".join(job_ids))
        try:
            raw = self.json(command)
        except SlurmError as exc:
            if job_ids and "Invalid job id" in str(exc):
                return []  # every one of them has left the controller's memory
            raise
        jobs = [job_of(j) for j in raw.get("jobs", [])]
        return [j for j in jobs if not job_ids or j.id in job_ids]

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.json(["sinfo", "--json"]).get("nodes", []))

    def version(self) -> str:
        return self.run(["sinfo", "--version"]).strip()

    def accounted(self, job_id: str) -> tuple[datetime | None, datetime | None]:
        """(start, end) of an ended job from accounting (`sacct --json`, slurmdbd); (None, None)
        where the cluster has no accounting or has not recorded the end yet."""
        try:
            raw = self.json(["sacct", "--json", "-j", job_id])
        except SlurmError:
            return None, None  # no slurmdbd: "accounting storage is disabled"
        for job in raw.get("jobs", []):
            times = job.get("time") or {}
            if str(job.get("job_id")) == job_id and _time(times.get("end")) is not None:
                return _time(times.get("start")), _time(times.get("end"))
        return None, None

    def completion_log(self, job_id: str) -> tuple[datetime | None, datetime | None]:
        """(start, end) of an ended job from the job completion log (`sacct -c`, jobcomp/filetxt)."""
        try:
            out = self.run(["sacct", "-c", "-n", "-P", "-o", "Start,End", "-j", job_id])
        except SlurmError:
            return None, None
        for line in out.splitlines():
            start, _, end = line.partition("|")
            if _parse_local(end) is not None:
                return _parse_local(start), _parse_local(end)
        return None, None

    # -- acting ---------------------------------------------------------------------------------

    def sbatch(self, options: list[str], script: str) -> str:
        out = self.run(["sbatch", "--parsable", *options], stdin=script)
        return out.strip().split(";", 1)[0]

    def scancel(self, job_id: str) -> None:
        self.run(["scancel", job_id])

    def set_time_limit(self, job_id: str, minutes: int) -> None:
        self.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"])


def _parse_local(text: str) -> datetime | None:
    """sacct's `2026-12-03T16:04:13` (the cluster's local time) as an aware UTC time."""
    text = text.strip()
    if not text or text in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None
