"""The hot read path (`deepops ls`) without SQLAlchemy.

Importing SQLAlchemy and its ORM costs more than everything else `ls` does, so listing reads the
two tables it needs with the database's own driver (sqlite3, psycopg). It serves only a ledger
already at HEAD_REVISION; anything else (a fresh or older schema, another driver) returns None
and the caller takes the SQLAlchemy path, which migrates. tests/test_quickread.py checks that
both paths give the same answer on SQLite and PostgreSQL.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from deepops_infra.ledger import HEAD_REVISION
from deepops_infra.pricing import cost

COLUMNS = (
    "id",
    "name",
    "status",
    "status_reason",
    "cloud",
    "region",
    "host",
    "owner",
    "team",
    "project",
    "image",
    "image_pin",
    "accelerator",
    "gpu_count",
    "request",
    "plan",
    "price_per_hour",
    "created_at",
    "ready_at",
    "expires_at",
    "ended_at",
)
_TIMES = ("created_at", "ready_at", "expires_at", "ended_at")


def _connect(url: str) -> tuple[Any, str] | None:
    if url.startswith("sqlite:///"):
        import sqlite3

        path = url.removeprefix("sqlite:///")
        try:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30), "?"
        except sqlite3.Error:
            return None
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            try:
                import psycopg
            except ImportError:
                return None
            return psycopg.connect("postgresql://" + url.removeprefix(prefix), connect_timeout=10), "%s"
    return None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def list_machines(
    url: str, include_ended: bool, owner: str | None, at: datetime
) -> list[tuple[SimpleNamespace, Decimal]] | None:
    """Machines with their cost so far, oldest first; None when this path cannot serve the ledger."""
    opened = _connect(url)
    if opened is None:
        return None
    conn, mark = opened
    try:
        cur = conn.cursor()
        try:
            cur.execute("SELECT version_num FROM alembic_version")
            if (cur.fetchone() or (None,))[0] != HEAD_REVISION:
                return None
        except Exception:
            return None
        where, params = [], []
        if not include_ended:
            where.append("ended_at IS NULL")
        if owner:
            where.append(f"owner = {mark}")
            params.append(owner)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM machines{clause} ORDER BY created_at", params)
        machines = []
        for row in cur.fetchall():
            m = SimpleNamespace(**dict(zip(COLUMNS, row, strict=True)))
            for name in _TIMES:
                setattr(m, name, _time(getattr(m, name)))
            m.request, m.plan = _json(m.request), _json(m.plan)
            m.price_per_hour = Decimal(str(m.price_per_hour))
            machines.append(m)
        totals = {m.id: Decimal(0) for m in machines}
        joined = f" JOIN machines m ON m.id = u.machine_id{clause.replace('ended_at', 'm.ended_at')}"
        joined = joined.replace("owner =", "m.owner =")
        cur.execute(
            f"SELECT u.machine_id, u.started_at, u.ended_at, u.price_per_hour FROM usage_intervals u{joined}", params
        )
        for machine_id, start, end, price in cur.fetchall():
            if machine_id in totals:
                totals[machine_id] += cost(Decimal(str(price)), _time(start), _time(end) or at)
        return [(m, totals[m.id]) for m in machines]
    finally:
        conn.close()
