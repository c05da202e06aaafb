"""Spend against the monthly budgets of teams and projects: one report for `deepops cost
budgets` (local mode) and GET /budgets (the server, for finance, IT and a team's admin)."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from deepops_infra.service.access import LOCAL, Actor, need

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger


@dataclass(frozen=True)
class BudgetLine:
    kind: str
    name: str
    budget: Decimal
    spent: Decimal
    percent: Decimal
    forecast: Decimal
    state: str

    @classmethod
    def of(cls, st: Any) -> "BudgetLine":
        return cls(st.kind, st.name, st.budget, st.spent, st.percent, st.forecast, st.state)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BudgetLine":
        amount = {k: Decimal(str(data[k])) for k in ("budget", "spent", "percent", "forecast")}
        return cls(kind=data["kind"], name=data["name"], state=data["state"], **amount)


@dataclass
class BudgetReport:
    month: str
    budgets: list[BudgetLine]
    statuses: list[dict[str, Any]]  # the lines as JSON (an interface: `--json`, the API)
    alerts: dict[str, Any] = field(default_factory=dict)  # key -> notify.Sent, when alerts were sent

    def to_json(self) -> dict[str, Any]:
        sent = [key for key, a in self.alerts.items() if a.delivered]
        pending = [{"key": key, "error": a.error} for key, a in self.alerts.items() if not a.delivered]
        return {"month": self.month, "budgets": self.statuses, "alerts_sent": sent, "alerts_not_delivered": pending}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BudgetReport":
        lines = [BudgetLine.from_json(d) for d in data["budgets"]]
        return cls(month=data["month"], budgets=lines, statuses=data["budgets"])


def budget_report(
    settings: "Settings", ledger: "Ledger", month: str | None, actor: Actor = LOCAL, alert: bool = False
) -> BudgetReport:
    """The month's budgets (this month by default); a team-admin sees their team's only. With
    `alert`, threshold alerts not sent yet are sent (each once a month; current month only)."""
    from deepops_infra.costs import budgets as budget_mod
    from deepops_infra.costs.period import Period

    need(actor, "finance", "team-admin", "it-admin")
    now = datetime.now(UTC)
    period = Period.month(month) if month else Period.current_month(now)
    config = budget_mod.load(settings.config)
    statuses = budget_mod.status(ledger, config, period, now)
    if actor.role == "team-admin":
        statuses = [st for st in statuses if st.kind == "team" and st.name == actor.team]
    alerts = budget_mod.send_alerts(settings, ledger, config, statuses) if alert and period.contains(now) else {}
    lines = [BudgetLine.of(st) for st in statuses]
    return BudgetReport(period.label, lines, [st.to_json() for st in statuses], alerts)
