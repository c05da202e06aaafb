"""Durations written the way people type them: `30m`, `8h`, `2d`, `1h30m`, `90s`."""

import re
from datetime import timedelta

from deepops_infra.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """Parse `30m`, `8h`, `2d`, `1h30m`; a positive duration or a UserError naming the option."""
    value = text.strip().lower()
    if not _WHOLE.fullmatch(value):
        raise UserError(
            f"{option}: {text!r} is not a duration; use a number with a unit s, m, h, d or w, e.g. 30m, 8h, 2d or 1h30m"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
    if seconds <= 0:
        raise UserError(f"{option}: {text!r} must be longer than zero, e.g. 30m or 8h")
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
