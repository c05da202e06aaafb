"""One reaper cycle.

1. Discover every provider's reality (first, so any resource found has its ledger row already:
   rows are written before resources exist).
2. Reconcile with the ledger: an orphan is a resource of this installation with no live row (also
   one a machine left beside its own resources once those are gone: provider.discover_leftovers);
   a ghost is a live row whose resources are confirmed gone (closed at the confirmed time).
3. Evaluate the policies for every live machine (reaper/policy.py), reading utilization and
   checking in with each machine's agent.
4. Warn (webhook, once per episode), and once the grace is over act: tear down through the
   provider with the lifecycle, which closes the record only on confirmed termination.
5. Prune what orphan removals put in quarantine (on-prem workspaces) once past its retention.

Orphans: one whose machine has an ended ledger row is removed at once (the row proves it was
ours, and that it ended). One with no ledger row at all (a resource made after the ledger's
backup was taken, or by a launch whose row is lost) is mark-then-act: the first cycle that sees
it records a mark (reaper_actions, action `mark-orphan`), reports it and notifies once; it is
removed only by a cycle at least `reaper.orphan_grace` later, and on-prem its workspace goes to
quarantine, not away.

Guards: resources without `deepops-managed=true`, of another installation or with
`deepops-protect=true` are never acted on; a cap bounds the destructive actions per cycle; a
per-machine lock (reaper/lock.py) and a re-read of the row under it make two reapers act on a
machine exactly once. Every action is an event with its reason.
"""

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from deepops_infra import states
from deepops_infra.config import Settings
from deepops_infra.costs.budgets import over_budget_teams
from deepops_infra.durations import format_duration
from deepops_infra.errors import DeepopsError
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.liveness import LAUNCHER_EVENT, LaunchLocks
from deepops_infra.ledger.schema import Event, Machine, Notification, ReaperAction, UtilizationSample
from deepops_infra.lifecycle import Lifecycle
from deepops_infra.progress import QuietProgress
from deepops_infra.providers.base import Provider, Resource, ResourceBusy, Utilization
from deepops_infra.reaper import guards
from deepops_infra.reaper.heap import cycle_heap
from deepops_infra.reaper.lock import MachineLocks
from deepops_infra.reaper.policy import LIVE_STATES, SETUP_STATES, Due, MachineFacts, evaluate
from deepops_infra.reaper.settings import ReaperSettings

DESTRUCTIVE = ("teardown", "fail", "close-ghost", "terminate-orphan")
# Which destructive actions go first when the cap stops a cycle short.
PRIORITY = {
    "agent-ended": 0,
    "setup-failed": 1,
    "teardown-stuck": 2,
    "setup-stuck": 3,
    "launcher-dead": 3,
    "ghost": 4,
    "ttl-expired": 5,
    "policy-max-ttl": 6,
    "idle": 7,
    "orphan": 8,
}
GHOST_STATES = (states.READY, states.IDLE, states.TERMINATING, states.FAILED)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


@dataclass
class Action:
    kind: str  # warn | teardown | fail | close-ghost | terminate-orphan | mark-orphan | mark-ready | prune-quarantine
    reason: str
    detail: str
    cloud: str
    machine_id: str | None = None
    resource: Resource | None = None
    owner: str | None = None
    deadline: datetime | None = None
    confirmed_at: datetime | None = None
    key: str | None = None  # a warning's key: one message per machine, reason and episode
    outcome: str = "planned"  # planned (dry run) | done | skipped | failed | capped
    note: str | None = None

    @property
    def destructive(self) -> bool:
        return self.kind in DESTRUCTIVE

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.kind,
            "machine": self.machine_id,
            "resource": self.resource.resource_id if self.resource else None,
            "cloud": self.cloud,
            "owner": self.owner,
            "reason": self.reason,
            "detail": self.detail,
            "deadline": _iso(self.deadline),
            "outcome": self.outcome,
            "note": self.note,
        }


@dataclass
class Report:
    started_at: datetime
    dry_run: bool
    installation_id: str = ""
    duration_seconds: float = 0.0
    machines_by_state: dict[str, int] = field(default_factory=dict)
    resources: Counter[str] = field(default_factory=Counter)
    actions: list[Action] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    capped: str | None = None

    def summary(self) -> str:
        """The cycle as one log line (logfmt), the same from `deepops reap` and the server's loop."""

        def counts(values: Iterable[str]) -> str:
            return ",".join(f"{k}:{n}" for k, n in sorted(Counter(values).items())) or "-"

        return (
            f"reaper cycle dry_run={'yes' if self.dry_run else 'no'} duration_s={self.duration_seconds:.3f} "
            f"machines={sum(self.machines_by_state.values())} actions={len(self.actions)} "
            f"by_reason={counts(a.reason for a in self.actions)} by_outcome={counts(a.outcome for a in self.actions)} "
            f"errors={len(self.errors)} capped={'yes' if self.capped else 'no'}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": _iso(self.started_at),
            "dry_run": self.dry_run,
            "installation_id": self.installation_id,
            "duration_seconds": round(self.duration_seconds, 3),
            "machines_by_state": self.machines_by_state,
            "resources": dict(self.resources),
            "actions": [a.to_json() for a in self.actions],
            "waiting": self.waiting,
            "errors": self.errors,
            "capped": self.capped,
        }


@dataclass
class _Live:
    machine: Machine
    facts: MachineFacts
    utilization: Utilization | None = None
    samples: list[tuple[datetime, float, bool | None]] = field(default_factory=list)


class Reaper:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        providers: dict[str, Provider] | None = None,
        reaper_settings: ReaperSettings | None = None,
    ) -> None:
        """`providers` fixes the targets (tests); by default every target that may hold machines."""
        self.settings = settings
        self.ledger = ledger
        self.rs = reaper_settings or ReaperSettings.load(settings)
        self.fixed = providers is not None
        self._providers: dict[str, Provider] = dict(providers or {})
        self.locks = MachineLocks(ledger)

    # -- targets ------------------------------------------------------------------------------

    def provider(self, cloud: str) -> Provider:
        if cloud not in self._providers:
            from deepops_infra.providers import get_provider

            self._providers[cloud] = get_provider(cloud, self.settings, self.ledger)
        return self._providers[cloud]

    def clouds(self, live: Iterable[str]) -> list[str]:
        """The targets to list: the configured ones and those of the live machines (`live`: their clouds)."""
        if self.fixed:
            return sorted(self._providers)
        from deepops_infra.providers import PROVIDERS

        wanted = {"onprem", *self.rs.clouds, *live}
        wanted |= {c for c in PROVIDERS if c in self.settings.config.sections}
        from deepops_infra.pool_clusters import cluster_targets

        wanted |= cluster_targets(self.settings.pool_path)  # the pool's clusters: their jobs are listed too
        return sorted(wanted)

    # -- the cycle ----------------------------------------------------------------------------

    def run(self, dry_run: bool = False) -> Report:
        with cycle_heap():
            return self._cycle(dry_run)

    def _cycle(self, dry_run: bool) -> Report:
        t0 = time.monotonic()
        now = store.now()
        report = Report(started_at=now, dry_run=dry_run)
        with self.ledger.write() as session:
            report.installation_id = installation = store.installation_id(session)
            clouds = self.clouds(session.scalars(select(Machine.cloud).where(Machine.ended_at.is_(None)).distinct()))
        found: dict[str, list[Resource]] = {}
        leftovers: list[Resource] = []
        for cloud in clouds:
            try:
                found[cloud] = self.provider(cloud).discover()
            except Exception as exc:  # one target failing must not stop the others
                report.errors.append(f"{cloud}: discovery failed: {type(exc).__name__}: {exc}")
                continue
            try:
                leftovers += self.provider(cloud).discover_leftovers(found[cloud])
            except Exception as exc:  # its machines are still reaped; what they left waits for a later cycle
                report.errors.append(f"{cloud}: listing leftovers failed: {type(exc).__name__}: {exc}")
        live = self._load_live(now)
        try:
            over = over_budget_teams(self.settings, self.ledger, now, alert=not dry_run)
        except Exception as exc:  # budgets must never stop the TTL and idle policies
            over = {}
            report.errors.append(f"budgets: {type(exc).__name__}: {exc}")
        for item in live.values():
            if item.machine.team in over:
                item.facts = replace(item.facts, over_budget=over[item.machine.team])
        report.machines_by_state = dict(Counter(x.machine.status for x in live.values()))
        actions: list[Action] = []
        seen, ours, gone = self._classify(found, installation, report)
        protected = {mid for mid, rs in ours.items() if any(guards.verdict(r, installation) == "protected" for r in rs)}
        actions += self._orphans(ours, protected, live, now, report)
        left, left_protected = self._left_behind(leftovers, seen, installation)
        actions += self._orphans(left, left_protected, live, now, report)  # after the machines' own: the cap
        to_evaluate = []
        for item in live.values():
            m = item.machine
            if m.cloud not in found:
                continue  # its target could not be listed: nothing is known, nothing is done
            if m.id in protected:
                report.waiting.append({"machine": m.id, "why": "protected (deepops-protect=true): never reaped"})
                continue
            if m.status in GHOST_STATES and m.id not in seen:
                actions += self._ghost(item, gone.get(m.id), report)
                continue
            to_evaluate.append(item)
        self._read_utilization(to_evaluate, now, report)
        config = self.settings.config  # once per cycle: reading it checks policy.yaml for changes
        for item in to_evaluate:
            actions += self._evaluate(item, now, dry_run, report, config.policy_for(item.machine.team))
        self._cap(actions, len(live) + sum(1 for a in actions if a.kind == "terminate-orphan"), report)
        for action in actions:
            if action.outcome == "capped":
                continue
            if dry_run:
                action.outcome = "planned"
                continue
            self._execute(action, live, report)
        if not dry_run:
            actions += self._prune_quarantine(list(found), report)
        report.actions = actions
        report.duration_seconds = time.monotonic() - t0
        return report

    # -- reading ------------------------------------------------------------------------------

    def _load_live(self, now: datetime) -> dict[str, _Live]:
        with self.ledger.read() as session:
            machines = store.list_machines(session)
            ids = [m.id for m in machines]
            progress: dict[str, datetime] = {}
            extends: dict[str, datetime] = {}
            kept: set[str] = set()
            launched: set[str] = set()  # machines whose launcher holds a lock (ledger/liveness.py)
            samples: dict[str, list[tuple[datetime, float, bool | None]]] = defaultdict(list)
            if ids:
                for mid, kind, at in session.execute(
                    select(Event.machine_id, Event.kind, func.max(Event.at))
                    .where(Event.machine_id.in_(ids), Event.kind.in_(("transition", "extend", "kept", LAUNCHER_EVENT)))
                    .group_by(Event.machine_id, Event.kind)
                ):
                    if kind == "kept":
                        kept.add(mid)
                    elif kind == LAUNCHER_EVENT:
                        launched.add(mid)
                    else:
                        (progress if kind == "transition" else extends)[mid] = at
                longest = max((int(m.request.get("idle_timeout") or 0) for m in machines), default=0)
                since = now - timedelta(seconds=longest) - 2 * self.rs.max_sample_gap
                for mid, at, interval, active in session.execute(
                    select(
                        UtilizationSample.machine_id,
                        UtilizationSample.at,
                        UtilizationSample.interval_seconds,
                        UtilizationSample.active,
                    ).where(UtilizationSample.machine_id.in_(ids), UtilizationSample.at >= since)
                ):
                    samples[mid].append((at, float(interval), active))
        return {
            m.id: _Live(
                machine=m,
                facts=self._facts(
                    m, progress.get(m.id), extends.get(m.id), m.id in kept, self._launcher_alive(m, launched)
                ),
                samples=samples.get(m.id, []),
            )
            for m in machines
        }

    def _launcher_alive(self, m: Machine, launched: set[str]) -> bool | None:
        """Whether the process launching (or failing) the machine still runs; None: nothing known (a
        machine written before launchers held locks, or one past its launch)."""
        if m.id not in launched or m.status not in (*SETUP_STATES, states.FAILED):
            return None
        return LaunchLocks.of(self.ledger).alive(m.id)

    @staticmethod
    def _facts(
        m: Machine,
        progress: datetime | None,
        extended: datetime | None,
        kept: bool = False,
        launcher_alive: bool | None = None,
    ) -> MachineFacts:
        return MachineFacts(
            id=m.id,
            status=m.status,
            created_at=m.created_at,
            ready_at=m.ready_at,
            expires_at=m.expires_at,
            idle_timeout=timedelta(seconds=int(m.request.get("idle_timeout") or 3600)),
            last_progress_at=progress or m.created_at,
            last_extend_at=extended,
            kept=kept,
            launcher_alive=launcher_alive,
        )

    def _classify(
        self, found: dict[str, list[Resource]], installation: str, report: Report
    ) -> tuple[set[str], dict[str, list[Resource]], dict[str, Resource]]:
        """(machine IDs seen in any form, our resources by machine ID, resources already gone)."""
        seen: set[str] = set()
        ours: dict[str, list[Resource]] = defaultdict(list)
        gone: dict[str, Resource] = {}
        for resources in found.values():
            for r in resources:
                key = r.machine_id or r.resource_id
                if r.state in guards.GONE_STATES:
                    gone[key] = r
                    continue
                seen.add(key)
                verdict = guards.verdict(r, installation)
                report.resources[verdict] += 1
                if verdict in (guards.OURS, guards.PROTECTED):
                    ours[key].append(r)
        return seen, ours, gone

    @staticmethod
    def _left_behind(
        leftovers: list[Resource], seen: set[str], installation: str
    ) -> tuple[dict[str, list[Resource]], set[str]]:
        """Leftovers of this installation by machine ID, only of machines none of whose own resources
        is still there (while one is, removing it is what takes them along), and which are protected."""
        held: dict[str, list[Resource]] = defaultdict(list)
        protected: set[str] = set()
        for r in leftovers:
            key = r.machine_id or r.resource_id
            if r.state in guards.GONE_STATES or key in seen:
                continue
            verdict = guards.verdict(r, installation)
            if verdict in (guards.OURS, guards.PROTECTED):
                held[key].append(r)
            if verdict == guards.PROTECTED:
                protected.add(key)
        return held, protected

    # -- reconciling --------------------------------------------------------------------------

    def _orphans(
        self,
        ours: dict[str, list[Resource]],
        protected: set[str],
        live: dict[str, _Live],
        now: datetime,
        report: Report,
    ) -> list[Action]:
        candidates = [key for key in ours if key not in live]
        if not candidates:
            return []
        with self.ledger.read() as session:
            ended = dict(session.execute(select(Machine.id, Machine.ended_at).where(Machine.id.in_(candidates))).all())
        marks = self._marks([key for key in candidates if key not in ended])
        actions = []
        for key in candidates:
            ended_at = ended.get(key)
            if ended_at is not None and ended_at >= now:
                continue  # closed while this cycle ran: the resource list is older than that
            if key in protected:
                report.waiting.append({"machine": key, "why": "orphan, but protected (deepops-protect=true)"})
                continue
            if key in ended:
                actions += [
                    self._orphan_action("terminate-orphan", key, r, f"{key} ended at {_iso(ended_at)}")
                    for r in ours[key]
                ]
            else:
                actions += self._unclaimed(key, ours[key], marks, now, report)
        return actions

    def _orphan_action(self, kind: str, key: str | None, resource: Resource, why: str) -> Action:
        where = f"{resource.resource_id} on {resource.location or resource.cloud}"
        owner = resource.tags.get("deepops-owner")
        return Action(kind, "orphan", f"{where}: {why}", resource.cloud, machine_id=key, resource=resource, owner=owner)

    def _unclaimed(
        self,
        key: str,
        resources: list[Resource],
        marks: dict[tuple[str, str], datetime],
        now: datetime,
        report: Report,
    ) -> list[Action]:
        """Mark-then-act for the resources of a machine with no ledger row at all: the first cycle
        that sees them marks the machine once (per target); a cycle at least reaper.orphan_grace
        after that removes them."""
        actions = []
        for cloud in sorted({r.cloud for r in resources}):
            mine = [r for r in resources if r.cloud == cloud]
            seen_at = marks.get((cloud, key))
            if seen_at is None:
                more = f" (and {len(mine) - 1} more of its resources)" if len(mine) > 1 else ""
                due = now + self.rs.orphan_grace
                why = f"no ledger row for {key}{more}; removed at {_iso(due)} or later unless protected"
                mark = self._orphan_action("mark-orphan", None, mine[0], why)
                mark.deadline = due
                actions.append(mark)
            elif now < seen_at + self.rs.orphan_grace:
                due = _iso(seen_at + self.rs.orphan_grace)
                why = f"orphan with no ledger row: first seen {_iso(seen_at)}, removed at {due} unless claimed"
                report.waiting.append({"machine": key, "why": why})
            else:
                why = f"no ledger row for {key}, first seen {_iso(seen_at)}"
                actions += [self._orphan_action("terminate-orphan", None, r, why) for r in mine]
        return actions

    def _marks(self, keys: list[str]) -> dict[tuple[str, str], datetime]:
        """When each machine with no ledger row was first seen: (target, machine ID or resource ID of
        an untagged one) -> its earliest `mark-orphan` trace."""
        keys = sorted({k[:255] for k in keys})
        if not keys:
            return {}
        with self.ledger.read() as session:
            rows = session.execute(
                select(
                    ReaperAction.cloud, ReaperAction.machine_tag, ReaperAction.resource_id, func.min(ReaperAction.at)
                )
                .where(
                    ReaperAction.action == "mark-orphan",
                    or_(
                        ReaperAction.machine_tag.in_([k for k in keys if len(k) <= 64]),
                        ReaperAction.resource_id.in_(keys),
                    ),
                )
                .group_by(ReaperAction.cloud, ReaperAction.machine_tag, ReaperAction.resource_id)
            ).all()
        marks: dict[tuple[str, str], datetime] = {}
        for cloud, tag, rid, at in rows:
            key = (cloud, tag or rid)
            marks[key] = min(at, marks.get(key, at))
        return marks

    def _ghost(self, item: _Live, gone: Resource | None, report: Report) -> list[Action]:
        m = item.machine
        confirmed = store.now() if gone is not None else self.provider(m.cloud).confirm_gone(m)
        if confirmed is None:
            report.waiting.append({"machine": m.id, "why": "no resources found, not confirmed gone yet"})
            return []
        return [
            Action(
                "close-ghost",
                "ghost",
                f"{m.status} in the ledger, but its resources are gone (confirmed {_iso(confirmed)})",
                m.cloud,
                machine_id=m.id,
                owner=m.owner,
                confirmed_at=confirmed,
            )
        ]

    # -- policies -----------------------------------------------------------------------------

    def _read_utilization(self, items: list[_Live], now: datetime, report: Report) -> None:
        """Every live machine's utilization, one utilization_many() per target (batched reads)."""
        by_cloud: dict[str, list[_Live]] = defaultdict(list)
        for item in items:
            if item.machine.status in LIVE_STATES:
                by_cloud[item.machine.cloud].append(item)
        for cloud, group in by_cloud.items():
            try:
                readings = self.provider(cloud).utilization_many([x.machine for x in group])
            except Exception as exc:  # unreadable counts as active
                error = f"{type(exc).__name__}: {exc}"
                readings = {x.machine.id: Utilization.unknown(now, error) for x in group}
            for item in group:
                item.utilization = readings.get(item.machine.id)
                if item.utilization is not None and item.utilization.error:
                    report.errors.append(f"{item.machine.id}: utilization: {item.utilization.error}")

    def _evaluate(self, item: _Live, now: datetime, dry_run: bool, report: Report, policy: Any) -> list[Action]:
        m = item.machine
        if m.status in LIVE_STATES and item.utilization is not None:
            item.samples.append(self._sample_tuple(item, now))
            if not dry_run:
                self._store_sample(item, now)
                self._checkin(self.provider(m.cloud), item, report)
        due = evaluate(item.facts, item.utilization, item.samples, now, policy, self.rs)
        return self._decide(item, due, now, report)

    def _decide(self, item: _Live, due: Due | None, now: datetime, report: Report | None) -> list[Action]:
        m = item.machine
        if due is None:
            if m.status == states.IDLE:
                return [Action("mark-ready", "active", "in use again", m.cloud, machine_id=m.id, owner=m.owner)]
            return []
        if not due.warn:
            kind = "fail" if due.reason in ("setup-stuck", "launcher-dead") else "teardown"
            return [Action(kind, due.reason, due.detail, m.cloud, machine_id=m.id, owner=m.owner)]
        from deepops_infra.notify import configured

        key = due.warning_key(m.id)
        with self.ledger.read() as session:
            warned = session.execute(
                select(Notification.at, Notification.delivered).where(Notification.key == key)
            ).first()
        # The grace runs from the recorded warning, delivered or not (a webhook that is missing or
        # down delays no teardown); a warning sent late still gets the whole grace.
        deadline = due.ends_at(now if warned is None else warned.at, self.rs.grace)
        if warned is not None and now >= deadline:
            return [
                Action(
                    "teardown",
                    due.reason,
                    f"{due.detail}; warned at {_iso(warned.at)}",
                    m.cloud,
                    machine_id=m.id,
                    owner=m.owner,
                    deadline=deadline,
                )
            ]
        if warned is not None and report is not None:
            undelivered = "" if warned.delivered else " (warning not delivered yet)"
            report.waiting.append(
                {"machine": m.id, "why": f"{due.reason}: warned, ends at {_iso(deadline)} unless extended{undelivered}"}
            )
        if warned is None or (not warned.delivered and configured(self.settings)):
            # The warning, or a retry of its delivery while the machine waits (the recorded message).
            return [
                Action(
                    "warn", due.reason, due.detail, m.cloud, machine_id=m.id, owner=m.owner, deadline=deadline, key=key
                )
            ]
        return []

    def _sample_tuple(self, item: _Live, now: datetime) -> tuple[datetime, float, bool | None]:
        u = item.utilization
        assert u is not None
        last = max((s[0] for s in item.samples), default=None)
        interval = (now - last).total_seconds() if last else self.rs.interval.total_seconds()
        interval = min(max(interval, 1.0), self.rs.max_sample_gap.total_seconds())
        return (min(u.at, now), interval, u.active)

    def _store_sample(self, item: _Live, now: datetime) -> None:
        u = item.utilization
        assert u is not None
        at, interval, active = item.samples[-1]
        signals = {k: v.get("state") for k, v in (u.signals or {}).items() if isinstance(v, dict)}
        if u.signals and "error" in u.signals:
            signals["error"] = str(u.signals["error"])[:200]
        with self.ledger.write() as session:
            session.add(
                UtilizationSample(
                    machine_id=item.machine.id,
                    at=at,
                    interval_seconds=int(interval),
                    source=u.source,
                    gpu_util_percent=sum(u.gpu_percent) / len(u.gpu_percent) if u.gpu_percent else None,
                    gpu_mem_percent=(
                        sum(u.gpu_memory_percent) / len(u.gpu_memory_percent) if u.gpu_memory_percent else None
                    ),
                    active=active,
                    signals=signals or None,
                )
            )

    def _checkin(self, provider: Provider, item: _Live, report: Report) -> None:
        from deepops_infra.agent.settings import agent_control

        m = item.machine
        try:
            provider.checkin(m, agent_control(self.settings, m, "deepops reap"))
        except Exception as exc:
            report.errors.append(f"{m.id}: check-in: {type(exc).__name__}: {exc}")

    # -- the cap ------------------------------------------------------------------------------

    def _cap(self, actions: list[Action], fleet: int, report: Report) -> None:
        destructive = sorted((a for a in actions if a.destructive), key=lambda a: PRIORITY.get(a.reason, 99))
        allowed = self.rs.allowed_actions(fleet)
        if len(destructive) <= allowed:
            return
        for action in destructive[allowed:]:
            action.outcome = "capped"
            action.note = "refused by the cap on actions per cycle"
        report.capped = (
            f"cap reached: {len(destructive)} destructive actions planned, {allowed} allowed "
            f"(max_actions {self.rs.max_actions}, max_fraction {self.rs.max_fraction} of {fleet}); "
            f"refused {len(destructive) - allowed}: check the reaper before raising reaper.max_actions"
        )
        report.errors.append(report.capped)

    # -- acting -------------------------------------------------------------------------------

    def _execute(self, action: Action, live: dict[str, _Live], report: Report) -> None:
        key = action.machine_id or (action.resource.resource_id if action.resource else "")
        with self.locks.hold(key) as held:
            if not held:
                action.outcome, action.note = "skipped", "another reaper is acting on it"
                return
            try:
                self._act(action, live)
            except (DeepopsError, NotImplementedError, OSError) as exc:
                action.outcome, action.note = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                report.errors.append(f"{key}: {action.kind} ({action.reason}) failed: {action.note}")

    def _still_due(self, action: Action, item: _Live) -> tuple[Machine, str | None]:
        """Re-read the row under the lock: (the fresh row, why the action no longer applies)."""
        # The launcher first: it lets go of its lock only after its last write to the row.
        launched = {item.machine.id} if item.facts.launcher_alive is not None else set()
        launcher_alive = self._launcher_alive(item.machine, launched)
        with self.ledger.read() as session:
            row = store.find_machine(session, item.machine.id)
            progress = session.scalar(
                select(func.max(Event.at)).where(Event.machine_id == row.id, Event.kind == "transition")
            )
            extended = session.scalar(
                select(func.max(Event.at)).where(Event.machine_id == row.id, Event.kind == "extend")
            )
            kept = session.scalar(select(Event.id).where(Event.machine_id == row.id, Event.kind == "kept")) is not None
        if row.ended_at is not None:
            return row, f"already ended ({row.status})"
        if action.kind == "close-ghost":
            return row, None if row.status in GHOST_STATES else f"now {row.status}"
        facts = replace(self._facts(row, progress, extended, kept, launcher_alive), over_budget=item.facts.over_budget)
        fresh = _Live(row, facts, item.utilization, item.samples)
        now = store.now()
        policy = self.settings.config.policy_for(row.team)
        due = evaluate(fresh.facts, fresh.utilization, fresh.samples, now, policy, self.rs)
        again = self._decide(fresh, due, now, None)
        same = [a for a in again if a.kind == action.kind and a.reason == action.reason]
        if not same:
            return row, "no longer due (extended, in use again, or changed by someone else)"
        action.key, action.deadline = same[0].key, same[0].deadline or action.deadline
        return row, None

    def _act(self, action: Action, live: dict[str, _Live]) -> None:
        if action.kind == "terminate-orphan":
            self._terminate_orphan(action)
            return
        if action.kind == "mark-orphan":
            self._mark_orphan(action)
            return
        assert action.machine_id is not None
        row, stale = self._still_due(action, live[action.machine_id])
        if stale:
            action.outcome, action.note = "skipped", stale
            return
        reason = f"reaper: {action.reason}: {action.detail}"
        if action.kind == "warn":
            self._warn(action, row)
        elif action.kind == "mark-ready":
            with self.ledger.write() as session:
                fresh = store.find_machine(session, row.id, for_update=True)
                if fresh.status == states.IDLE:
                    store.transition(session, fresh, states.READY, "in use again")
            action.outcome = "done"
        elif action.kind == "close-ghost":
            self._close_ghost(action, row)
        else:
            with self.ledger.write() as session:
                store.add_event(session, store.find_machine(session, row.id), "reaper", reason, data=action.to_json())
            lifecycle = Lifecycle(self.settings, self.ledger, self.provider(row.cloud), QuietProgress())
            if action.kind == "fail":
                lifecycle.fail(row, reason, teardown=True, created=True)
            elif row.status in (states.FAILED, states.TERMINATING):
                lifecycle._teardown(row, reason)
            else:
                lifecycle.down(row, reason)
            action.outcome = "done"

    def _terminate_orphan(self, action: Action) -> None:
        """Break-glass removal. An orphan of an ended machine gets an event on that machine; one
        with no machine row at all is recorded in reaper_actions, whether it worked or not."""
        resource = action.resource
        assert resource is not None
        try:
            note = self.provider(action.cloud).terminate_resource(resource)
        except ResourceBusy as exc:  # nothing was done: no trace, the next cycle tries again
            action.outcome, action.note = "skipped", f"in use, left for a later cycle: {exc}"
            return
        except (DeepopsError, NotImplementedError, OSError) as exc:
            if not action.machine_id:
                note = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._record_unknown(action, resource, "failed", note)
            raise
        action.outcome, action.note = "done", note
        if action.machine_id:
            with self.ledger.write() as session:
                row = store.find_machine(session, action.machine_id)
                store.add_event(session, row, "reaper", f"orphan removed: {action.detail}", data=action.to_json())
        else:
            self._record_unknown(action, resource, "done", note)

    def _mark_orphan(self, action: Action) -> None:
        """The first sight of an orphan with no ledger row: recorded (its first-seen time is the
        mark's), and the people told once; nothing is touched."""
        from deepops_infra.notify import send_once

        resource = action.resource
        assert resource is not None
        mark = self._record_unknown(action, resource, "done", "marked: nothing touched yet")
        when = _iso(action.deadline)
        text = (
            f"deepops: {resource.resource_id} on {resource.location or resource.cloud} carries this installation's "
            f"marks for {resource.machine_id or '-'} but has no ledger row. The reaper removes it at {when} or later "
            "(on-prem: processes ended, workspace moved to quarantine). To keep it, protect it "
            "(deepops-protect=true; on-prem: create .deepops/protect in the workspace)."
        )
        fields = {"resource": resource.resource_id, "where": resource.location or resource.cloud, "removed at": when}
        sent = send_once(self.settings, self.ledger, f"orphan-mark:{mark}", "reaper-orphan", text, fields)
        action.outcome, action.note = "done", "marked and notified" if sent else "marked"

    def _prune_quarantine(self, clouds: list[str], report: Report) -> list[Action]:
        """Delete what orphan removals quarantined, once past reaper.quarantine_retention."""
        actions = []
        for cloud in clouds:
            try:
                pruned = self.provider(cloud).prune_quarantine(self.rs.quarantine_retention)
            except Exception as exc:  # the cycle's actions are done; pruning waits for a later cycle
                report.errors.append(f"{cloud}: pruning the quarantine failed: {type(exc).__name__}: {exc}")
                continue
            for resource in pruned:
                retention = format_duration(self.rs.quarantine_retention)
                detail = f"{resource.resource_id} on {resource.location or cloud}: quarantined over {retention} ago"
                action = Action("prune-quarantine", "retention", detail, cloud, resource=resource, outcome="done")
                self._record_unknown(action, resource, "done")
                actions.append(action)
        return actions

    def _record_unknown(self, action: Action, resource: Resource, outcome: str, note: str | None = None) -> int:
        """A reaper_actions row for an action on a resource without a machine row; its ID."""
        data = {**action.to_json(), "outcome": outcome, "note": note, "tags": resource.tags}
        failed = "failed: " if outcome == "failed" else ""
        with self.ledger.write() as session:
            row = ReaperAction(
                at=store.now(),
                cloud=resource.cloud,
                resource_id=resource.resource_id[:255],
                location=(resource.location or "")[:128] or None,
                machine_tag=(resource.machine_id or "")[:64] or None,
                action=action.kind,
                reason=action.reason,
                detail=action.detail if note is None else f"{action.detail}; {failed}{note}",
                outcome=outcome,
                data=data,
            )
            session.add(row)
            session.flush()
            return row.id

    def _warn(self, action: Action, row: Machine) -> None:
        from deepops_infra.notify import send_once

        assert action.key is not None
        ends = _iso(action.deadline)
        keep = "Using it again keeps it, and so does" if action.reason == "idle" else "Keep it with"
        text = (
            f"deepops: {row.id} ({row.owner}, {row.team}/{row.project}) will be ended at {ends}: {action.detail}. "
            f"{keep} `deepops extend {row.id} --ttl 1h`."
        )
        where = row.host or row.region or "-"
        fields = {"machine": row.id, "reason": action.reason, "ends at": ends or "-", "host": where}
        sent = send_once(self.settings, self.ledger, action.key, "reaper-warning", text, fields, machine_id=row.id)
        if not sent.first:  # recorded before: a retry of its delivery, or nothing left to do
            if sent.delivered:
                action.outcome, action.note = "done", "delivered on a retry"
            elif sent.error:
                action.outcome, action.note = "failed", sent.describe()
            else:
                action.outcome, action.note = "skipped", "already warned"
            return
        with self.ledger.write() as session:
            fresh = store.find_machine(session, row.id, for_update=True)
            store.add_event(session, fresh, "reaper-warning", f"warned: {action.detail}", data=action.to_json())
            if action.reason == "idle" and fresh.status == states.READY:
                store.transition(session, fresh, states.IDLE, action.detail)
        action.outcome = "done"
        action.note = None if sent.delivered else f"recorded; {sent.describe()}"

    def _close_ghost(self, action: Action, row: Machine) -> None:
        at = action.confirmed_at or store.now()
        with self.ledger.write() as session:
            fresh = store.find_machine(session, row.id, for_update=True)
            store.add_event(session, fresh, "reaper", f"ghost: {action.detail}", data=action.to_json(), at=at)
            if states.can_transition(fresh.status, states.TERMINATING):
                store.transition(session, fresh, states.TERMINATING, "reaper: resources found gone", at=at)
            if states.can_transition(fresh.status, states.TERMINATED):
                store.transition(session, fresh, states.TERMINATED, "reaper: termination confirmed", at=at)
            store.end_machine(session, fresh, at)
            self.provider(fresh.cloud).release_reservation(session, fresh, at)
        action.outcome = "done"
