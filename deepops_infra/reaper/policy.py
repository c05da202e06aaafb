"""What each live machine is due for, as a pure function of its row, its signals and the time.

Reasons, in the order they win: `setup-failed` (a failed launch still holding resources),
`launcher-dead` (a launch whose process is gone: its lock, ledger/liveness.py, is free), `setup-stuck`
/ `teardown-stuck` (no progress for `setup_timeout`: the process doing it died, or hangs),
`agent-ended` (the dead-man switch already ended it), `policy-max-ttl` (the team's maximum TTL,
lowered since launch, is past), `ttl-expired`, `idle` (every signal idle for the idle timeout).
The last three are warned `grace` before they are due, so that a machine nobody keeps ends at its
expiry or idle timeout, within a cycle: the owner has the grace to `deepops extend` (or, when idle,
to use it again). An idle machine's grace is at most `idle_grace_fraction` of its idle timeout.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from deepops_infra import states
from deepops_infra.config import TeamPolicy
from deepops_infra.durations import format_duration
from deepops_infra.providers.base import Utilization
from deepops_infra.reaper.settings import ReaperSettings

SETUP_STATES = (states.REQUESTED, states.PROVISIONING, states.CONFIGURING, states.VALIDATING)
LIVE_STATES = (states.READY, states.IDLE)


@dataclass(frozen=True)
class Due:
    reason: str
    detail: str
    due_at: datetime
    warn: bool  # a warning and the grace come first
    episode: str = ""  # what makes this warning distinct from an earlier one (an expiry, an idle start)
    grace: timedelta | None = None  # warned this long before due_at (None: the reaper's grace)

    def warning_key(self, machine_id: str) -> str:
        return f"reaper:{machine_id}:{self.reason}:{self.episode}"

    def ends_at(self, warned_at: datetime, default_grace: timedelta) -> datetime:
        """When a machine warned at `warned_at` ends: when it is due, and never before a whole
        grace after its warning (a warning sent late, the reaper having been down, still gets it)."""
        return max(self.due_at, warned_at + (default_grace if self.grace is None else self.grace))


@dataclass(frozen=True)
class MachineFacts:
    """The parts of a machine row and its history the policies read."""

    id: str
    status: str
    created_at: datetime
    ready_at: datetime | None
    expires_at: datetime
    idle_timeout: timedelta
    last_progress_at: datetime  # the last transition (or event) written by whoever is working on it
    last_extend_at: datetime | None = None
    kept: bool = False  # failed and kept for debugging (--keep-on-failure): the TTL still holds
    launcher_alive: bool | None = None  # its launching process holds its lock (None: nothing known)
    over_budget: str | None = None  # the team's budget is spent and says running machines stop


def idle_since(samples: Iterable[tuple[datetime, float, bool | None]], now: datetime, max_gap: timedelta) -> datetime:
    """Since when the samples show the machine idle without a break (now: not idle, or unknown).

    A sample covers [at - interval, at]; one that is active or unreadable ends the idle stretch,
    and so does a gap longer than max_gap (nobody knows what happened in it).
    """
    cursor = now
    for at, interval, active in sorted(samples, key=lambda s: s[0], reverse=True):
        if at > now:
            continue
        if cursor - at > max_gap:
            return cursor
        if active is not False:
            return at
        cursor = at - timedelta(seconds=interval)
    return cursor


def last_active(
    facts: MachineFacts,
    utilization: Utilization | None,
    samples: Iterable[tuple[datetime, float, bool | None]],
    now: datetime,
    max_gap: timedelta,
) -> datetime:
    """The last moment the machine was in use, never before it was ready or last extended."""
    if utilization is not None and utilization.active is None:
        seen = now  # a signal that cannot be read counts as active
    elif utilization is not None and utilization.last_active_at is not None:
        seen = min(utilization.last_active_at, now)
    else:
        seen = idle_since(samples, now, max_gap)
    floors = [facts.ready_at or facts.created_at]
    if facts.last_extend_at is not None:
        floors.append(facts.last_extend_at)
    return max(seen, *floors)


def evaluate(
    facts: MachineFacts,
    utilization: Utilization | None,
    samples: Iterable[tuple[datetime, float, bool | None]],
    now: datetime,
    policy: TeamPolicy,
    rs: ReaperSettings,
) -> Due | None:
    stalled = now - facts.last_progress_at
    if facts.status == states.FAILED:
        if facts.launcher_alive and stalled < rs.setup_timeout:
            return None  # its launcher is tearing it down now
        if facts.kept and now < facts.expires_at:
            return None
        detail = "kept for debugging and past its TTL" if facts.kept else "failed and still holding resources"
        return Due("setup-failed", detail, facts.last_progress_at, warn=False)
    if facts.status in SETUP_STATES:
        if facts.launcher_alive is False:
            return Due(
                "launcher-dead",
                f"{facts.status}, and the process launching it is gone (killed or crashed)",
                now,
                warn=False,
            )
        if stalled >= rs.setup_timeout:
            return Due(
                "setup-stuck",
                f"{facts.status} with no progress for {format_duration(stalled)} (setup_timeout "
                f"{format_duration(rs.setup_timeout)}): the launch is dead",
                facts.last_progress_at + rs.setup_timeout,
                warn=False,
            )
        return None
    if facts.status == states.TERMINATING:
        if stalled >= rs.setup_timeout:
            return Due(
                "teardown-stuck",
                f"terminating with no progress for {format_duration(stalled)}: finishing the release",
                facts.last_progress_at + rs.setup_timeout,
                warn=False,
            )
        return None
    if facts.status not in LIVE_STATES:
        return None
    if utilization is not None and utilization.ended_by_agent:
        return Due("agent-ended", f"the machine's agent ended it: {utilization.ended_by_agent}", now, warn=False)
    start = facts.ready_at or facts.created_at
    expiry, reason = facts.expires_at, "ttl-expired"
    if start + policy.max_ttl < expiry:
        expiry, reason = start + policy.max_ttl, "policy-max-ttl"
    if now >= expiry - rs.grace:
        what = "TTL" if reason == "ttl-expired" else f"the team's maximum TTL ({format_duration(policy.max_ttl)})"
        verb = "ended" if now >= expiry else "ends"
        detail = f"{what} {verb} at {expiry:%Y-%m-%d %H:%M:%S}Z"
        return Due(reason, detail, expiry, warn=True, episode=str(int(expiry.timestamp())))
    if facts.over_budget:
        return Due("budget-exceeded", facts.over_budget, now, warn=True, episode=f"{now:%Y-%m}")
    seen = last_active(facts, utilization, samples, now, rs.max_sample_gap)
    idle_for = now - seen
    grace = rs.idle_grace(facts.idle_timeout)
    if idle_for >= facts.idle_timeout - grace:  # warned a grace early: ended at the idle timeout
        return Due(
            "idle",
            f"idle for {format_duration(idle_for)} (idle timeout {format_duration(facts.idle_timeout)})",
            seen + facts.idle_timeout,
            warn=True,
            episode=str(int(seen.timestamp())),
            grace=grace,
        )
    return None
