"""Durations written the way people type them: `30m`, `8h`, `2d`, `1h30m`, `90s`."""

import re
from datetime import timedelta

from deepops_infra.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# ASCII digits only: `\d` would also take full-width or Arabic-Indic digits.
_PART = re.compile(r"([0-9]+)([smhdw])")
_WHOLE = re.compile(r"(?:[0-9]+[smhdw])+")
# Far beyond any lease, token or timeout, and far inside what dates and the ledger can hold
# (an expiry of now + MAX_DURATION must never overflow).
MAX_DURATION = timedelta(days=3650)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """Parse `30m`, `8h`, `2d`, `1h30m`; a positive duration of at most MAX_DURATION, or a
    UserError naming the option."""
    value = text.strip().lower()
    if not _WHOLE.fullmatch(value):
        raise UserError(
            f"{option}: {_shown(text)} is not a duration; "
            "use a number with a unit s, m, h, d or w, e.g. 30m, 8h, 2d or 1h30m"
        )
    limit = int(MAX_DURATION.total_seconds())
    parts = _PART.findall(value)
    # A number longer than the limit has digits is over it (and int() of thousands of digits is refused).
    too_long = any(len(n.lstrip("0")) > len(str(limit)) for n, _ in parts)
    seconds = limit + 1 if too_long else sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"{option}: {_shown(text)} must be longer than zero, e.g. 30m or 8h")
    if seconds > limit:
        raise UserError(f"{option}: {_shown(text)} is too long; at most {format_duration(MAX_DURATION)} (ten years)")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | float) -> str:
    """`timedelta(hours=1, minutes=30)` -> `1h30m`; seconds shown only under ten minutes."""
    total = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if total < 600 and (seconds or total == 0):
        parts.append(f"{seconds}s")
    return sign + "".join(parts)
