"""Reconciliation: the ledger against each cloud's bill, per machine.

Every deepops resource carries the `deepops-machine` tag (a label on GCP); with it activated as a
cost-allocation tag, the bill can be grouped per machine. A BillingSource reads one month of the
bill grouped that way; `compare` lines it up with the ledger's costs of that cloud's machines.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from deepops_infra.config import Config
from deepops_infra.costs.period import Period
from deepops_infra.errors import UserError

MACHINE_TAG = "deepops-machine"
SOURCES = ("aws", "gcp", "azure")


@dataclass
class Bill:
    """One month of a cloud bill, per machine tag; spend without the tag is summed apart."""

    cloud: str
    by_machine: dict[str, Decimal] = field(default_factory=dict)
    untagged: Decimal = Decimal(0)
    currency: str = "USD"
    estimated: bool = False

    def add(self, machine: str | None, amount: Decimal) -> None:
        if machine:
            self.by_machine[machine] = self.by_machine.get(machine, Decimal(0)) + amount
        else:
            self.untagged += amount


class BillingSource(ABC):
    cloud: str

    @abstractmethod
    def fetch(self, period: Period) -> Bill:
        """The bill for [period.start, period.end) grouped by the machine tag."""


@dataclass
class Line:
    machine: str
    ledger: Decimal
    bill: Decimal
    status: str

    @property
    def difference(self) -> Decimal:
        return self.bill - self.ledger


@dataclass
class Reconciliation:
    cloud: str
    period: Period
    lines: list[Line]
    untagged: Decimal
    currency: str
    estimated: bool
    tolerance: Decimal

    @property
    def ledger_total(self) -> Decimal:
        return sum((line.ledger for line in self.lines), Decimal(0))

    @property
    def bill_total(self) -> Decimal:
        return sum((line.bill for line in self.lines), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "month": self.period.label,
            "currency": self.currency,
            "estimated": self.estimated,
            "tolerance": float(self.tolerance),
            "ledger_total": float(self.ledger_total),
            "bill_total": float(self.bill_total),
            "untagged": float(self.untagged),
            "machines": [
                {
                    "machine": line.machine,
                    "ledger": float(line.ledger),
                    "bill": float(line.bill),
                    "difference": float(line.difference),
                    "status": line.status,
                }
                for line in self.lines
            ],
        }


def compare(ledger: Any, source: BillingSource, period: Period, tolerance: Decimal) -> Reconciliation:
    """Ledger cost per machine of this cloud (same period rules as `deepops cost`) against the bill."""
    from deepops_infra.costs.report import build

    bill = source.fetch(period)
    report = build(ledger, period, ["cloud", "machine"])
    ours = {row.keys["machine"]: row.cost for row in report.rows if row.keys["cloud"] == source.cloud}
    if bill.currency != "USD":
        raise UserError(f"the {source.cloud} bill is in {bill.currency}; the ledger prices in USD")
    lines = []
    for machine in sorted(set(ours) | set(bill.by_machine)):
        mine, theirs = ours.get(machine), bill.by_machine.get(machine)
        if mine is None:
            status = "only on the bill"
        elif theirs is None:
            status = "only in the ledger"
        elif abs(theirs - mine) <= tolerance:
            status = "match"
        else:
            status = "differs"
        lines.append(Line(machine, mine or Decimal(0), theirs or Decimal(0), status))
    lines.sort(key=lambda line: (line.status == "match", -abs(line.difference), line.machine))
    return Reconciliation(source.cloud, period, lines, bill.untagged, bill.currency, bill.estimated, tolerance)


def source_for(cloud: str, config: Config) -> BillingSource:
    if cloud == "aws":
        from deepops_infra.costs.reconcile.aws import CostExplorer

        return CostExplorer.from_config(config)
    if cloud == "gcp":
        from deepops_infra.costs.reconcile.gcp import BigQueryBillingExport

        return BigQueryBillingExport.from_config(config)
    if cloud == "azure":
        from deepops_infra.costs.reconcile.azure import CostManagement

        return CostManagement.from_config(config)
    raise UserError(f"--cloud {cloud!r}: use one of {', '.join(SOURCES)}")
