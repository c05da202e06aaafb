"""What a user asks for, parsed and checked before anything is written."""

import getpass
import re
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from deepops_infra.accelerators import ACCELERATORS, canonical_model
from deepops_infra.config import TARGETS
from deepops_infra.durations import parse_duration
from deepops_infra.errors import UserError

_GPUS_RE = re.compile(r"(?:(?P<model>[A-Za-z][A-Za-z0-9_-]*)(?::(?P<count>[^:]*))?|(?P<only>[0-9]+))", re.ASCII)
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,38}")
_TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_COUNT_RE = re.compile(r"[0-9]+", re.ASCII)
MAX_GPUS_PER_MACHINE = 16


@dataclass(frozen=True)
class GpuSpec:
    """`A100:8` -> model A100, count 8; `H100` -> one H100; `0` -> CPU only; `2` -> two of any model."""

    model: str | None
    count: int

    @classmethod
    def parse(cls, text: str) -> "GpuSpec":
        allowed = (
            f"use MODEL:COUNT (e.g. A100:8), MODEL for one (e.g. H100), a count of any model, "
            f"or 0 for CPU only; models: {', '.join(ACCELERATORS)}"
        )
        match = _GPUS_RE.fullmatch(text.strip())
        if not match:
            raise UserError(f"--gpus: {text!r} is malformed; {allowed}")
        if match["only"] is not None:
            count = int(match["only"])
            if count > MAX_GPUS_PER_MACHINE:
                raise UserError(f"--gpus: {count} GPUs is more than one machine has (at most {MAX_GPUS_PER_MACHINE})")
            return cls(None, count)
        model = canonical_model(match["model"])
        if model is None:
            raise UserError(f"--gpus: unknown GPU model {match['model']!r}; {allowed}")
        count_text = match["count"] if match["count"] is not None else "1"
        if not _COUNT_RE.fullmatch(count_text) or int(count_text) < 1:
            raise UserError(
                f"--gpus: count {count_text!r} must be a whole number from 1 to "
                f"{MAX_GPUS_PER_MACHINE}, e.g. {model}:2; use --gpus 0 for CPU only"
            )
        count = int(count_text)
        if count > MAX_GPUS_PER_MACHINE:
            raise UserError(f"--gpus: {count} GPUs is more than one machine has (at most {MAX_GPUS_PER_MACHINE})")
        return cls(model, count)

    def __str__(self) -> str:
        if self.count == 0:
            return "0"
        return f"{self.model}:{self.count}" if self.model else str(self.count)


@dataclass(frozen=True)
class MachineRequest:
    """A request with every default resolved; stored verbatim in the ledger."""

    gpus: GpuSpec
    cloud: str
    region: str | None
    host: str | None
    image: str
    spot: bool
    ttl: timedelta
    idle_timeout: timedelta
    disk_gb: int | None
    owner: str
    team: str
    project: str
    name: str | None
    wait: timedelta | None = None  # Slurm clusters: how long a job may wait to start (None: the cluster's)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = str(self.gpus)
        data["ttl"] = int(self.ttl.total_seconds())
        data["idle_timeout"] = int(self.idle_timeout.total_seconds())
        if self.wait is None:
            del data["wait"]  # rows without it read as before
        else:
            data["wait"] = int(self.wait.total_seconds())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MachineRequest":
        return cls(
            **{
                **data,
                "gpus": GpuSpec.parse(data["gpus"]),
                "ttl": timedelta(seconds=data["ttl"]),
                "idle_timeout": timedelta(seconds=data["idle_timeout"]),
                "wait": timedelta(seconds=data["wait"]) if data.get("wait") is not None else None,
            }
        )


def default_owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def check_label(option: str, value: str) -> str:
    """Owner, team and project become cloud tags/labels: keep them to a charset every cloud takes."""
    if not _TAG_RE.fullmatch(value):
        raise UserError(
            f"{option}: {value!r} is not allowed; use lower-case letters, digits, '-', '_' "
            "and '.', starting with a letter or digit (at most 63)"
        )
    return value


def check_cloud(cloud: str) -> str:
    if cloud not in TARGETS:
        raise UserError(f"--cloud: unknown cloud {cloud!r}; choose one of {', '.join(TARGETS)}")
    return cloud


def check_name(name: str | None) -> str | None:
    if name is not None and not _NAME_RE.fullmatch(name):
        raise UserError(
            f"--name: {name!r} is not allowed; use lower-case letters, digits and '-', "
            "starting with a letter or digit (at most 39)"
        )
    return name


def check_disk(disk_gb: int | None) -> int | None:
    if disk_gb is not None and not 1 <= disk_gb <= 65536:
        raise UserError(f"--disk: {disk_gb} GB is out of range; give 1 to 65536 (GB)")
    return disk_gb


def parse_ttl(text: str) -> timedelta:
    return parse_duration(text, "--ttl")


def parse_idle_timeout(text: str) -> timedelta:
    return parse_duration(text, "--idle-timeout")


def parse_wait(text: str) -> timedelta:
    return parse_duration(text, "--wait")
