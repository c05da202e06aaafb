"""Hourly prices frozen at launch, and what a stretch of time costs at them."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from deepops_infra.errors import UserError

CENT = Decimal("0.01")


def finite_price(value: Any, what: str, allow_zero: bool = False) -> Decimal:
    """`value` as a Decimal that is finite and positive (or zero when allowed), else a UserError
    naming `what`: a NaN or infinite price must never reach the ledger (PostgreSQL's NUMERIC
    takes both)."""
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else None
    except (InvalidOperation, ValueError):
        amount = None
    if amount is None or not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        raise UserError(f"{what}: {str(value)[:40]!r} is not a finite positive price in USD")
    return amount


@dataclass(frozen=True)
class Price:
    """USD per hour, with the parts it is made of (stored with the machine, never re-priced)."""

    per_hour: Decimal
    parts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        finite_price(self.per_hour, "price per hour", allow_zero=True)

    def to_json(self) -> dict[str, Any]:
        return {"per_hour": str(self.per_hour), **self.parts}


def onprem_price(host_hour: float, gpu_hour: float, gpus: int) -> Price:
    host = finite_price(host_hour, "rates.host_hour")
    gpu = finite_price(gpu_hour, "rates.gpu_hour")
    return Price(per_hour=host + gpu * gpus, parts={"host_hour": str(host), "gpu_hour": str(gpu), "gpus": gpus})


MICRO = 1_000_000  # micro-dollars per dollar, microseconds per second
HOUR_US = 3_600_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def price_micro(per_hour: Decimal) -> int:
    """An hourly price (6 decimals at most, as the ledger stores it) in micro-dollars per hour."""
    return int((Decimal(per_hour) * MICRO).to_integral_value(ROUND_HALF_UP))


def epoch_us(at: datetime) -> int:
    """Microseconds since 1970 of an aware time: exact integer arithmetic, no float."""
    delta = at - EPOCH
    return (delta.days * 86400 + delta.seconds) * MICRO + delta.microseconds


def cost_micro(per_hour_micro: int, duration_us: int) -> int:
    """What `duration_us` costs at `per_hour_micro`, half-up to the micro-dollar.

    The one rounding rule of the tool; costs/query.py writes the same arithmetic in SQL."""
    duration_us = max(duration_us, 0)
    return (per_hour_micro * duration_us * 2 + HOUR_US) // (2 * HOUR_US)


def interval_cost_micro(
    started_us: int, ended_us: int | None, per_hour_micro: int, closed_cost: int | None, now_us: int
) -> int:
    """A usage interval's cost so far from the ledger's integer columns: the stored cost of a closed
    interval, an open one priced up to now."""
    if ended_us is not None and closed_cost is not None:
        return closed_cost
    return cost_micro(per_hour_micro, (ended_us if ended_us is not None else now_us) - started_us)


def micro_dollars(micro: int) -> Decimal:
    return Decimal(micro).scaleb(-6).quantize(Decimal("0.000001"))


def cost(per_hour: Decimal, start: datetime, end: datetime) -> Decimal:
    """Exact cost of [start, end) at an hourly price (to the micro-dollar)."""
    return micro_dollars(cost_micro(price_micro(per_hour), epoch_us(end) - epoch_us(start)))


def dollars(amount: Decimal) -> str:
    """An amount as people read it everywhere (deepops_infra/money.py)."""
    from deepops_infra.money import money

    return money(amount)


def decimal_text(value: Decimal) -> str:
    """The same number prints the same whatever the column scale: `0.050000` -> `0.05`."""
    return format(Decimal(value).normalize(), "f")


def price_text(per_hour: Decimal) -> str:
    """`Decimal('0.050000')` -> `$0.05`: at least cents, never trailing zeros past them (money.exact)."""
    from deepops_infra.money import exact

    return exact(per_hour)
