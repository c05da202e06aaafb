"""Monthly budgets per team and project (config.yaml `budgets:`), alerts, and the refusal rule.

    budgets:
      thresholds: [50, 80, 100]     # percent of a budget that alert, each once per month
      refuse_over_budget: true      # `up` is refused for a team whose month-to-date spend reached its budget
      teams:
        vision: 5000                # USD per UTC calendar month
        nlp: {monthly: 2000, refuse_over_budget: false}
      projects:
        detr: 1500

Spend is the ledger's cost for the month so far (see README "Cost reports"); alerts go through
notify.send_once under `budget:<team|project>:<name>:<YYYY-MM>:<pct>`, so each is delivered once;
one not delivered (no webhook yet, or it failed) is tried again by the next reaper cycle or
`deepops cost budgets` while it is the highest threshold reached in the month.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Config, Settings
from deepops_infra.costs.period import Period
from deepops_infra.errors import PolicyError
from deepops_infra.yamlfile import FileError, Mapping

if TYPE_CHECKING:
    from deepops_infra.notify import Sent

DEFAULT_THRESHOLDS = (50, 80, 100)
KINDS = ("team", "project")


@dataclass(frozen=True)
class Budget:
    kind: str  # team | project
    name: str
    monthly: Decimal
    refuse: bool
    stop_running: bool = False  # the reaper warns, then ends the team's running machines


@dataclass(frozen=True)
class BudgetConfig:
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    budgets: tuple[Budget, ...] = ()

    def for_team(self, team: str) -> Budget | None:
        return next((b for b in self.budgets if b.kind == "team" and b.name == team), None)


def _amount(value: Any, where: str, path: Any, line: int) -> Decimal:
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        raise FileError(path, line, f"{where} must be a positive amount in USD per month, e.g. 5000")
    return amount


def load(config: Config) -> BudgetConfig:
    """Parse and check the `budgets:` section; errors name the file and line."""
    section = config.section("budgets")
    path = config.path
    known = {"thresholds", "refuse_over_budget", "stop_running_over_budget", "teams", "projects"}
    for key in section:
        if key not in known:
            raise FileError(
                path, section.line_of(key), f"unknown budgets setting {key!r}; known: {', '.join(sorted(known))}"
            )
    thresholds = section.get("thresholds", list(DEFAULT_THRESHOLDS))
    if (
        not isinstance(thresholds, list)
        or not thresholds
        or not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds)
    ):
        raise FileError(
            path, section.line_of("thresholds"), "budgets.thresholds must be a list of percents, e.g. [50, 80, 100]"
        )
    refuse_default = section.get("refuse_over_budget", False)
    stop_default = section.get("stop_running_over_budget", False)
    for key, value in (("refuse_over_budget", refuse_default), ("stop_running_over_budget", stop_default)):
        if not isinstance(value, bool):
            raise FileError(path, section.line_of(key), f"budgets.{key} must be true or false")
    budgets: list[Budget] = []
    for kind in KINDS:
        entries = section.get(kind + "s")
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise FileError(path, section.line_of(kind + "s"), f"budgets.{kind}s must map names to monthly amounts")
        for name, value in entries.items():
            line = entries.line_of(name)
            where = f"budgets.{kind}s.{name}"
            refuse, stop = refuse_default, stop_default
            if isinstance(value, Mapping):
                extra = set(value) - {"monthly", "refuse_over_budget", "stop_running_over_budget"}
                if extra or "monthly" not in value:
                    raise FileError(
                        path,
                        line,
                        f"{where}: give `monthly:` (and optionally `refuse_over_budget:`, `stop_running_over_budget:`)",
                    )
                refuse = value.get("refuse_over_budget", refuse_default)
                stop = value.get("stop_running_over_budget", stop_default)
                if not isinstance(refuse, bool) or not isinstance(stop, bool):
                    raise FileError(
                        path, line, f"{where}: refuse_over_budget and stop_running_over_budget are true/false"
                    )
                value = value["monthly"]
            amount = _amount(value, where, path, line)
            budgets.append(Budget(kind, str(name), amount, refuse and kind == "team", stop and kind == "team"))
    return BudgetConfig(tuple(sorted(set(thresholds))), tuple(budgets))


@dataclass
class BudgetStatus:
    budget: Decimal
    kind: str
    name: str
    spent: Decimal
    forecast: Decimal
    month: str
    thresholds: tuple[int, ...] = field(default_factory=tuple)

    @property
    def percent(self) -> Decimal:
        return (self.spent * 100 / self.budget).quantize(Decimal("0.1"))

    @property
    def crossed(self) -> int | None:
        """The highest threshold reached (spend only grows within a month)."""
        reached = [t for t in self.thresholds if self.spent * 100 >= self.budget * t]
        return max(reached) if reached else None

    @property
    def state(self) -> str:
        if self.spent >= self.budget:
            return "over budget"
        return f"passed {self.crossed}%" if self.crossed else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "month": self.month,
            "budget": float(self.budget),
            "spent": float(self.spent),
            "percent": float(self.percent),
            "forecast": float(self.forecast),
            "state": self.state,
        }


def status(ledger: Any, config: BudgetConfig, period: Period, now: datetime) -> list[BudgetStatus]:
    """Spend of every budgeted team and project in the month, from one aggregation each."""
    from deepops_infra.costs.report import build

    out: list[BudgetStatus] = []
    for kind in KINDS:
        chosen = [b for b in config.budgets if b.kind == kind]
        if not chosen:
            continue
        report = build(ledger, period, [kind], now)
        by_name = {row.keys[kind]: row for row in report.rows}
        for b in chosen:
            row = by_name.get(b.name)
            spent = row.cost if row else Decimal(0)
            forecast = row.forecast if row and report.forecast_to else spent
            out.append(BudgetStatus(b.monthly, kind, b.name, spent, forecast, period.label, config.thresholds))
    return out


def alert_key(st: BudgetStatus, pct: int) -> str:
    return f"budget:{st.kind}:{st.name}:{st.month}:{pct}"


def send_alerts(
    settings: Settings, ledger: Any, config: BudgetConfig, statuses: list[BudgetStatus]
) -> dict[str, "Sent"]:
    """Send the highest threshold each budget has reached, once (again if not delivered before);
    returns the alerts delivered now and those still not delivered (with why), by key."""
    from deepops_infra.notify import send_once
    from deepops_infra.pricing import dollars

    out: dict[str, Sent] = {}
    for st in statuses:
        pct = st.crossed
        if pct is None:
            continue
        key = alert_key(st, pct)
        text = (
            f"deepops budget: {st.kind} *{st.name}* has used {st.percent}% of its {st.month} budget "
            f"({dollars(st.spent)} of {dollars(st.budget)}), past the {pct}% threshold"
        )
        fields = {
            "spent": dollars(st.spent),
            "budget": dollars(st.budget),
            "forecast for the month": dollars(st.forecast),
        }
        sent = send_once(settings, ledger, key, "budget-alert", text, fields)
        if sent.delivered or sent.error:
            out[key] = sent
    return out


def month_spend(session: Any, dialect: str, team: str, now: datetime) -> Decimal:
    """A team's cost this UTC month, inside the caller's transaction (for the refusal rule)."""
    from deepops_infra.costs import query
    from deepops_infra.costs.report import dollars_of

    period = Period.current_month(now)
    window = query.Window(query.to_us(period.start), query.to_us(now), query.to_us(now), 0)
    return dollars_of(query.team_spend(session, dialect, window, team))


def check_team_budget(config: Config, session: Any, team: str, now: datetime | None = None) -> None:
    """Refuse a new machine for a team whose month-to-date spend reached a budget that says so."""
    budget = load(config).for_team(team)
    if budget is None or not budget.refuse:
        return
    from deepops_infra.pricing import dollars

    now = now or datetime.now(UTC)
    spent = month_spend(session, session.get_bind().dialect.name, team, now)
    if spent >= budget.monthly:
        raise PolicyError(
            f"policy (team {team}, rule budgets.teams.{team}): the team has spent {dollars(spent)} of its "
            f"{dollars(budget.monthly)} budget for {now:%Y-%m}; no new machines until next month or a higher budget"
        )


def over_budget_teams(settings: Settings, ledger: Any, now: datetime, alert: bool = True) -> dict[str, str]:
    """Once per reaper cycle: send the month's budget alerts (once per threshold) and return the
    teams whose budget says running machines stop when it is spent, with why."""
    from deepops_infra.pricing import dollars

    config = load(settings.config)
    if not config.budgets:
        return {}
    statuses = status(ledger, config, Period.current_month(now), now)
    if alert:
        send_alerts(settings, ledger, config, statuses)
    stopping = {b.name for b in config.budgets if b.stop_running}
    return {
        st.name: f"team {st.name} spent {dollars(st.spent)} of its {dollars(st.budget)} budget for {st.month}"
        for st in statuses
        if st.kind == "team" and st.name in stopping and st.spent >= st.budget
    }


def mark_budgets(report: Any, config: BudgetConfig) -> None:
    """Give a report of one whole calendar month its monthly budgets, so that rows over theirs are
    highlighted (Report.over_budget); a report of any other period gets none."""
    from deepops_infra.costs.period import month_start, next_month

    start = report.period.start
    if start != month_start(start) or report.period.end != next_month(start):
        return
    report.budgets = {(b.kind, b.name): b.monthly for b in config.budgets}
