"""Reading an agent's status.json on the control plane: a Utilization for the reaper.

A status that is missing, unparsable or stale (the agent stopped writing) is "could not be read",
which counts as active: the reaper never reaps on silence. The dead-man switch having ended the
machine is reported as such, so the reaper closes it without a warning.
"""

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from deepops_infra.providers.base import Utilization


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def unreadable(reason: str, at: datetime | None = None) -> Utilization:
    return Utilization(
        at=at or datetime.now(UTC),
        gpu_percent=[],
        gpu_memory_percent=[],
        active=None,
        source="agent",
        signals={"error": reason},
    )


def from_status(text: str | None, now: datetime | None = None, stale_after: float | None = None) -> Utilization:
    now = now or datetime.now(UTC)
    if not text:
        return unreadable("no agent status", now)
    try:
        status = json.loads(text)
        at = _time(status["at"]) or now
        last_active = _time(status.get("last_active_at"))
        interval = float(status.get("interval_seconds") or 5)
    except (ValueError, KeyError, TypeError) as exc:
        return unreadable(f"agent status unreadable: {exc}", now)
    ended = status.get("ended") or {}
    if ended:
        return Utilization(
            at=at,
            gpu_percent=[],
            gpu_memory_percent=[],
            active=False,
            last_active_at=last_active,
            source="agent",
            signals=status.get("signals"),
            ended_by_agent=str(ended.get("reason") or "ended by the agent"),
        )
    limit = stale_after if stale_after is not None else max(30.0, 3 * interval + 10)
    if (now - at).total_seconds() > limit:
        return unreadable(f"agent status is stale (last written {at:%H:%M:%S}Z)", now)
    gpus = (status.get("signals") or {}).get("gpu", {}).get("gpus") or []
    return Utilization(
        at=at,
        gpu_percent=[float(g["util"]) for g in gpus],
        gpu_memory_percent=[float(g["mem"]) for g in gpus],
        active=not status.get("idle", False),
        last_active_at=last_active,
        source="agent",
        signals=status.get("signals"),
    )


def checkin_script(state_dir: str, sudo: bool = False) -> str:
    """A shell command writing its stdin as <state_dir>/checkin.json, atomically (the agent never
    reads half a file) and only where the agent's state directory exists. `sudo`: the directory
    is root's (the systemd agent on a cloud machine)."""
    quoted = shlex.quote(state_dir)
    tmp, final = f"{quoted}/checkin.json.tmp", f"{quoted}/checkin.json"
    script = f"[ ! -d {quoted} ] || {{ umask 077; cat > {tmp} && mv {tmp} {final}; }}"
    return f"sudo -n sh -c {shlex.quote(script)}" if sudo else script
