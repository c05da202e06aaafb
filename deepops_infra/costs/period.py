"""Report periods: half-open UTC ranges [start, end), from --month or --since/--until."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from deepops_infra.errors import UserError

_MONTH = re.compile(r"(\d{4})-(\d{2})")


def month_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    label: str

    @classmethod
    def month(cls, text: str) -> "Period":
        match = _MONTH.fullmatch(text.strip())
        if not match or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
            raise UserError(f"--month {text!r}: use YYYY-MM, e.g. 2026-10")
        start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
        return cls(start, next_month(start), start.strftime("%Y-%m"))

    @classmethod
    def current_month(cls, now: datetime) -> "Period":
        start = month_start(now)
        return cls(start, next_month(start), start.strftime("%Y-%m"))

    @classmethod
    def between(cls, since: str | None, until: str | None, now: datetime) -> "Period":
        start = parse_time(since, "--since") if since else month_start(now)
        end = parse_time(until, "--until") if until else now
        if end <= start:
            raise UserError(f"--until ({end:%Y-%m-%d %H:%M}Z) must be after --since ({start:%Y-%m-%d %H:%M}Z)")
        return cls(start, end, f"{_short(start)} to {_short(end)}")

    @classmethod
    def from_options(cls, month: str | None, since: str | None, until: str | None, now: datetime) -> "Period":
        if month and (since or until):
            raise UserError("--month cannot be combined with --since/--until; use one or the other")
        if month:
            return cls.month(month)
        if since or until:
            return cls.between(since, until, now)
        return cls.current_month(now)

    def days(self) -> list[tuple[datetime, datetime]]:
        """The period cut at UTC midnights (the first and last day may be partial)."""
        out, day = [], self.start
        while day < self.end:
            nxt = (day + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            out.append((day, min(nxt, self.end)))
            day = nxt
        return out

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def _short(at: datetime) -> str:
    return at.strftime("%Y-%m-%d") if at.time() == datetime.min.time() else at.strftime("%Y-%m-%d %H:%M:%SZ")


def parse_time(text: str, option: str) -> datetime:
    """`2026-10-01` (midnight UTC) or an ISO time; a time without an offset is UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{option} {text!r}: use a date (2026-10-01) or a UTC time (2026-10-01T12:00Z)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
