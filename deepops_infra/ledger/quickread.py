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

from deepops_infra.errors import NotFoundError
from deepops_infra.ledger import HEAD_REVISION
from deepops_infra.pricing import epoch_us, interval_cost_micro, micro_dollars

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
DETAIL = ("provider_refs", "manifest", "validation", "price_breakdown")  # what `show` adds
_TIMES = ("created_at", "ready_at", "expires_at", "ended_at")
_JSON = ("request", "plan", *DETAIL)
MONEY_PLACES = Decimal("0.000001")


def _connect(url: str) -> tuple[Any, str] | None:
    if url.startswith("sqlite:///"):
        import sqlite3

        path = url.removeprefix("sqlite:///")
        try:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False), "?"
        except sqlite3.Error:
            return None
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            try:
                import psycopg
            except ImportError:
                return None
            # autocommit: each read its own snapshot, no transaction left open on a kept connection
            conninfo = "postgresql://" + url.removeprefix(prefix)
            return psycopg.connect(conninfo, connect_timeout=10, autocommit=True), "%s"
    return None


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def connect(url: str) -> tuple[Any, str] | None:
    """A driver connection and its parameter mark, when this path can serve the ledger at `url`
    (a database at HEAD_REVISION through sqlite3 or psycopg); else None."""
    opened = _connect(url)
    if opened is None:
        return None
    conn, mark = opened
    try:
        cur = conn.cursor()
        cur.execute("SELECT version_num FROM alembic_version")
        if (cur.fetchone() or (None,))[0] == HEAD_REVISION:
            return conn, mark
    except Exception:
        pass
    conn.close()
    return None


def read_machines(
    conn: Any,
    mark: str,
    at: datetime,
    *,
    include_ended: bool,
    where: dict[str, str] | None = None,
    detail: bool = False,
) -> list[tuple[SimpleNamespace, Decimal]]:
    """Machines (oldest first) with their cost so far; `where`: column = value filters (owner,
    team, id, name); `detail`: with the columns `show` adds (DETAIL)."""
    clauses, params = [], []
    if not include_ended:
        clauses.append("m.ended_at IS NULL")
    for column, value in (where or {}).items():
        if column not in ("owner", "team", "id", "name"):
            raise ValueError(f"no filter on {column}")
        clauses.append(f"m.{column} = {mark}")
        params.append(value)
    clause = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    columns = COLUMNS + DETAIL if detail else COLUMNS
    cur = conn.cursor()
    cur.execute(f"SELECT {', '.join('m.' + c for c in columns)} FROM machines m{clause} ORDER BY m.created_at", params)
    machines = []
    for row in cur.fetchall():
        m = SimpleNamespace(**dict(zip(columns, row, strict=True)))
        for name in _TIMES:
            setattr(m, name, _time(getattr(m, name)))
        for name in _JSON:
            if hasattr(m, name):
                setattr(m, name, _json(getattr(m, name)))
        m.price_per_hour = Decimal(str(m.price_per_hour)).quantize(MONEY_PLACES)  # as Numeric(14, 6) reads
        machines.append(m)
    if not machines:
        return []
    # Cost so far from the integer columns: a closed interval's stored cost, an open one priced to now.
    now_us = epoch_us(at)
    totals = dict.fromkeys((m.id for m in machines), 0)
    cur.execute(
        "SELECT u.machine_id, u.started_us, u.ended_us, u.price_micro, u.cost_micro"
        f" FROM usage_intervals u JOIN machines m ON m.id = u.machine_id{clause}",
        params,
    )
    for machine_id, *interval in cur.fetchall():
        if machine_id in totals:
            totals[machine_id] += interval_cost_micro(*interval, now_us)
    return [(m, micro_dollars(totals[m.id])) for m in machines]


def find_machine(
    conn: Any, mark: str, ref: str, at: datetime, within: dict[str, str] | None = None
) -> tuple[SimpleNamespace, Decimal, list[Any]]:
    """One machine for `show`, as store.find_machine finds it (by ID, else by name among live
    machines, those matching `within` only), with its cost so far and its events (oldest first)."""
    found = read_machines(conn, mark, at, include_ended=True, where={"id": ref}, detail=True)
    if not found:
        named = {"name": ref} | (within or {})
        found = read_machines(conn, mark, at, include_ended=False, where=named, detail=True)
        if len(found) > 1:
            raise ambiguous_name(ref, [m.id for m, _ in found])
    if not found:
        raise no_machine(ref)
    machine, spent = found[0]
    cur = conn.cursor()
    cur.execute(
        f"SELECT at, kind, from_status, to_status, reason FROM events WHERE machine_id = {mark} ORDER BY id",
        (machine.id,),
    )
    events = [
        SimpleNamespace(at=_time(at_), kind=kind, from_status=from_, to_status=to, reason=reason)
        for at_, kind, from_, to, reason in cur.fetchall()
    ]
    return machine, spent, events


def no_machine(ref: str) -> NotFoundError:
    return NotFoundError(f"no machine {ref!r}; see `deepops ls --all`")


def ambiguous_name(ref: str, ids: list[str]) -> NotFoundError:
    return NotFoundError(f"{ref!r} names {len(ids)} machines; use the ID ({', '.join(ids)})")


def read_token(conn: Any, mark: str, token_hash: str) -> SimpleNamespace | None:
    """The API token with this hash and its user (the server checks revocation, expiry and a
    disabled user on what comes back), or None when no token has it."""
    cur = conn.cursor()
    cur.execute(
        "SELECT t.id, t.expires_at, t.revoked_at, u.name, u.team, u.role, u.disabled"
        f" FROM api_tokens t JOIN api_users u ON u.name = t.user_name WHERE t.token_hash = {mark}",
        (token_hash,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    token_id, expires_at, revoked_at, name, team, role, disabled = row
    return SimpleNamespace(
        id=token_id,
        expires_at=_time(expires_at),
        revoked_at=_time(revoked_at),
        name=name,
        team=team,
        role=role,
        disabled=bool(disabled),
    )


def list_machines(
    url: str, include_ended: bool, owner: str | None, at: datetime
) -> list[tuple[SimpleNamespace, Decimal]] | None:
    """Machines with their cost so far, oldest first; None when this path cannot serve the ledger."""
    opened = connect(url)
    if opened is None:
        return None
    conn, mark = opened
    try:
        return read_machines(conn, mark, at, include_ended=include_ended, where={"owner": owner} if owner else None)
    finally:
        conn.close()
