"""Hourly prices frozen at launch, and what a stretch of time costs at them."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Price:
    """USD per hour, with the parts it is made of (stored with the machine, never re-priced)."""

    per_hour: Decimal
    parts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"per_hour": str(self.per_hour), **self.parts}


def onprem_price(host_hour: float, gpu_hour: float, gpus: int) -> Price:
    host = Decimal(str(host_hour))
    gpu = Decimal(str(gpu_hour))
    return Price(per_hour=host + gpu * gpus, parts={"host_hour": str(host), "gpu_hour": str(gpu), "gpus": gpus})


def cost(per_hour: Decimal, start: datetime, end: datetime) -> Decimal:
    """Exact cost of [start, end) at an hourly price (to the micro-dollar)."""
    seconds = Decimal(max((end - start) / timedelta(microseconds=1), 0)) / Decimal(1_000_000)
    return (per_hour * seconds / Decimal(3600)).quantize(Decimal("0.000001"), ROUND_HALF_UP)


def dollars(amount: Decimal) -> str:
    return f"${amount.quantize(CENT, ROUND_HALF_UP)}" if amount >= CENT or amount == 0 else f"${amount:.4f}"


def decimal_text(value: Decimal) -> str:
    """The same number prints the same whatever the column scale: `0.050000` -> `0.05`."""
    return format(Decimal(value).normalize(), "f")


def price_text(per_hour: Decimal) -> str:
    """`Decimal('0.050000')` -> `$0.05`: at least cents, never trailing zeros past them."""
    text = format(per_hour.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"
