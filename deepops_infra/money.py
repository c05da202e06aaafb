"""How money reads to people: one format for the CLI, `show`, the web page and the HTML report.

- Amounts (`money`): thousands separators; cents from a dollar up (half up); below a dollar, two
  significant digits so that a few micro-dollars never read as `$0.00` (`$0.05`, `$0.0042`).
- Hourly prices (`rate`): the exact frozen price, at least cents, to the micro-dollar (`$3.6725/h`).
- Chart axes (`ticks`, `tick_label`): round steps of 1, 2 or 5 x 10^k chosen for the data's range,
  labelled with as many decimals as the step needs, so two ticks never read the same.

CSV and JSON carry plain numbers, never these strings. deepops_infra/server/static/money.js is
the same rules for the web page (tests/test_money.py holds the two to the same table of values).
"""

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any

MICRO = 1_000_000
NONE = "-"  # what a missing amount reads as (never `None`)


def to_micro(amount: Any) -> int:
    """An amount (Decimal, int, float or numeric string) in whole micro-dollars, half up."""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return int((value * MICRO).to_integral_value(ROUND_HALF_UP))


def _signed(micro: int, text: str) -> str:
    return f"-${text}" if micro < 0 else f"${text}"


def money(amount: Any) -> str:
    """`1234.5` -> `$1,234.50`; `0.0042` -> `$0.0042`; `0.05` -> `$0.05`; `None` -> `-`."""
    if amount is None:
        return NONE
    micro = to_micro(amount)
    a = abs(micro)
    if a >= MICRO or a == 0:
        cents = (a + 5_000) // 10_000
        return _signed(micro, f"{cents // 100:,}.{cents % 100:02d}")
    first = 7 - len(str(a))  # the decimal place of the first significant digit (1 = tenths)
    places = max(2, min(6, first + 1))  # two significant digits, at least cents
    step = 10 ** (6 - places)
    scaled = (a + step // 2) // step
    whole, frac = divmod(scaled, 10**places)
    digits = f"{frac:0{places}d}"
    while len(digits) > 2 and digits.endswith("0"):
        digits = digits[:-1]
    return _signed(micro, f"{whole:,}.{digits}")


def exact(amount: Any) -> str:
    """Every micro-dollar of a price, at least cents: `3.6725` -> `$3.6725`, `1500` -> `$1,500.00`."""
    if amount is None:
        return NONE
    micro = to_micro(amount)
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return _signed(micro, f"{whole:,}.{digits}")


def rate(per_hour: Any) -> str:
    """An hourly price as every place prints it: `$3.6725/h`."""
    return NONE if per_hour is None else exact(per_hour) + "/h"


def hours(value: Any, places: int = 1) -> str:
    """Hours (or GPU-hours) with thousands separators: `12345.67` -> `12,345.7`."""
    if value is None:
        return NONE
    rounded = Decimal(str(value)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    return f"{rounded:,.{places}f}"


def nice_step(vmax: Any, intervals: int = 4) -> Decimal:
    """A round step (1, 2 or 5 x 10^k) that cuts 0..vmax into about `intervals` pieces."""
    top = Decimal(str(vmax))
    if top <= 0:
        return Decimal(1)
    raw = top / intervals
    exponent = raw.adjusted()  # floor(log10(raw)), exact
    mantissa = raw.scaleb(-exponent)
    if mantissa < Decimal("1.5"):
        m = 1
    elif mantissa < 3:
        m = 2
    elif mantissa < 7:
        m = 5
    else:
        m, exponent = 1, exponent + 1
    return Decimal(m).scaleb(exponent)


def ticks(vmax: Any, intervals: int = 4) -> list[Decimal]:
    """Axis values from 0 up to the first round value at or above vmax (`ticks(0.03)` ->
    `0, 0.01, 0.02, 0.03`; an empty axis is `0, 1`)."""
    step = nice_step(vmax, intervals)
    top = Decimal(str(vmax)) if Decimal(str(vmax)) > 0 else step
    count = int((top / step).to_integral_value(rounding=ROUND_CEILING))
    return [step * i for i in range(max(count, 1) + 1)]


def tick_label(value: Decimal, step: Decimal) -> str:
    """A tick's label with the decimals its step needs (at least cents below a dollar); 0 is `$0`."""
    if value == 0:
        return "$0"
    places = 0 if step >= 1 else max(2, -step.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"${value:,.{places}f}"


def axis(vmax: Any, intervals: int = 4) -> list[tuple[Decimal, str]]:
    """`ticks` with their labels."""
    values = ticks(vmax, intervals)
    step = values[1] - values[0]
    return [(v, tick_label(v, step)) for v in values]


def price_words(parts: dict[str, Any] | None) -> str:
    """A frozen price's breakdown (Price.to_json) in words: `on-demand instance $3.06/h + 100 GB disk
    $0.0137/h`, `host $0.10/h + 2 GPUs x $2.00/h`; empty when there is nothing past the total."""
    parts = dict(parts or {})
    words: list[str] = []
    if "instance_hour" in parts:
        market = parts.get("market")
        words.append(f"{market + ' ' if market else ''}instance {rate(parts['instance_hour'])}")
    if "disk_hour" in parts:
        size = f"{parts['disk_gb']} GB " if parts.get("disk_gb") else ""
        words.append(f"{size}disk {rate(parts['disk_hour'])}")
    if "host_hour" in parts:
        words.append(f"host {rate(parts['host_hour'])}")
    if "gpu_hour" in parts:
        gpus = int(parts.get("gpus") or 0)
        words.append(f"{gpus} GPU{'s' if gpus != 1 else ''} x {rate(parts['gpu_hour'])}")
    known = {"per_hour", "instance_hour", "market", "disk_gb", "disk_hour", "host_hour", "gpu_hour", "gpus"}
    words += [f"{key.replace('_', ' ')} {value}" for key, value in parts.items() if key not in known]
    return " + ".join(words)
