"""`deepops catalog check`: prices and shapes that cannot be right, before they decide a placement.

Three checks over the offerings (the shipped table plus refreshed files, or one file):
- region-spread: one shape's on-demand price per GPU-hour differs across the regions of one cloud
  by more than a factor (spot prices are a market and are not compared across regions);
- spot-above-demand: a spot price above the on-demand price of the same offer;
- missing-shape: an offer without its GPU count, vCPUs or memory.

A finding the maintainers checked and kept is an accepted exception: a row of
`data/accepted.csv` naming the check, the offer and the source that justifies it.
"""

import csv
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path

from deepops_infra.catalog import Offering

ACCEPTED = Path(__file__).resolve().parent / "data" / "accepted.csv"
DEFAULT_FACTOR = Decimal("1.5")
CHECKS = ("region-spread", "spot-above-demand", "missing-shape")
ACCEPTED_COLUMNS = ("check", "cloud", "region", "instance_type", "accelerator_count", "source")


@dataclass(frozen=True)
class Finding:
    check: str
    cloud: str
    region: str  # "" for a finding about a shape across regions
    instance_type: str
    accelerator_count: int
    detail: str
    accepted: str = ""  # the source that justifies keeping it, when accepted

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Exception_:
    check: str
    cloud: str
    region: str  # "" matches every region
    instance_type: str
    accelerator_count: int
    source: str

    def covers(self, f: Finding) -> bool:
        return (self.check, self.cloud, self.instance_type, self.accelerator_count) == (
            f.check,
            f.cloud,
            f.instance_type,
            f.accelerator_count,
        ) and self.region in ("", f.region)


def read_accepted(path: Path = ACCEPTED) -> list[Exception_]:
    """The accepted exceptions; a bad row is a ValueError naming its line."""
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line and line[0] != "#"]
    reader = csv.DictReader([line for _, line in lines])
    if tuple(reader.fieldnames or ()) != ACCEPTED_COLUMNS:
        raise ValueError(f"{path}: expected columns {','.join(ACCEPTED_COLUMNS)}")
    found = []
    for row in reader:
        n = lines[reader.line_num - 1][0]
        if row["check"] not in CHECKS or not row["source"] or not row["instance_type"]:
            raise ValueError(f"{path} row {n}: needs a check ({', '.join(CHECKS)}), an instance type and a source")
        try:
            count = int(row["accelerator_count"])
        except ValueError:
            raise ValueError(f"{path} row {n}: accelerator_count must be a whole number") from None
        found.append(Exception_(row["check"], row["cloud"], row["region"], row["instance_type"], count, row["source"]))
    return found


def _money(value: Decimal) -> str:
    from deepops_infra.money import money

    return money(value)


def region_spread(offers: Iterable[Offering], factor: Decimal) -> list[Finding]:
    """Shapes whose on-demand price per GPU-hour spans more than `factor` across one cloud's regions."""
    by_shape: dict[tuple[str, str, str, int], list[tuple[Decimal, str]]] = defaultdict(list)
    for o in offers:
        if o.price_per_hour is not None and o.accelerator_count > 0:
            key = (o.cloud, o.instance_type, o.accelerator, o.accelerator_count)
            by_shape[key].append((o.price_per_hour / o.accelerator_count, o.region))
    found = []
    for (cloud, instance_type, accelerator, count), prices in sorted(by_shape.items()):
        (low, cheap), (high, dear) = min(prices), max(prices)
        if high > low * factor:
            ratio = (high / low).quantize(Decimal("0.01"))
            found.append(
                Finding(
                    "region-spread",
                    cloud,
                    "",
                    instance_type,
                    count,
                    f"{count} x {accelerator}: {_money(low)}/GPU-h in {cheap} vs {_money(high)} in {dear} "
                    f"(x{ratio} > x{factor})",
                )
            )
    return found


def per_offer(offers: Iterable[Offering]) -> list[Finding]:
    """Spot above on-demand, and shapes without their GPU count, vCPUs or memory."""
    found = []
    for o in offers:
        key = (o.cloud, o.region, o.instance_type, o.accelerator_count)
        spot, demand = o.spot_price_per_hour, o.price_per_hour
        if spot is not None and demand is not None and spot > demand:
            found.append(
                Finding("spot-above-demand", *key, f"spot {_money(spot)}/h above on-demand {_money(demand)}/h")
            )
        missing = [
            name
            for name, value in (("GPU count", o.accelerator_count), ("vCPUs", o.vcpus), ("memory", o.memory_gib))
            if value <= 0
        ]
        if missing:
            found.append(Finding("missing-shape", *key, f"{o.accelerator}: no {', no '.join(missing)}"))
    return found


def check(
    offers: list[Offering], factor: Decimal = DEFAULT_FACTOR, accepted: list[Exception_] | None = None
) -> list[Finding]:
    """Every finding, each marked with the source of the exception that accepts it (if one does)."""
    accepted = read_accepted() if accepted is None else accepted
    findings = region_spread(offers, factor) + per_offer(offers)
    marked = []
    for f in findings:
        source = next((e.source for e in accepted if e.covers(f)), "")
        marked.append(Finding(**{**asdict(f), "accepted": source}))
    return marked
