"""Ledger tables. Times are stored as UTC and always come back timezone-aware."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from deepops_infra.pricing import cost_micro, epoch_us, price_micro


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Money = Numeric(14, 6)


class Base(DeclarativeBase):
    pass


class Machine(Base):
    __tablename__ = "machines"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    cloud: Mapped[str] = mapped_column(String(16))
    region: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    team: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(64))
    image_pin: Mapped[str | None] = mapped_column(String(255))
    accelerator: Mapped[str | None] = mapped_column(String(32))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    provider_refs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    price_per_hour: Mapped[Decimal] = mapped_column(Money)
    price_breakdown: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The machine's usage and what it came to, closed once when it ends (costs/query.finalize):
    # a cost report reads these for a machine whose whole usage lies in its period instead of
    # adding up its intervals and samples again. usage_to_us is NULL until then.
    usage_from_us: Mapped[int | None] = mapped_column(BigInteger)
    usage_to_us: Mapped[int | None] = mapped_column(BigInteger)
    total_cost_micro: Mapped[int | None] = mapped_column(BigInteger)
    total_gpu_us: Mapped[int | None] = mapped_column(BigInteger)
    total_idle_micro: Mapped[int | None] = mapped_column(BigInteger)
    total_idle_gpu_us: Mapped[int | None] = mapped_column(BigInteger)

    # A cost report finds the machines touching its period by range searches of these (migration
    # 0006, costs/query._touching): closed machines by the start of their usage, the longest ones by
    # its length, those without closed totals (running, never started) by a partial index.
    __table_args__ = (
        Index("ix_machines_live", "ended_at", "created_at"),
        Index("ix_machines_usage", "usage_from_us", "usage_to_us"),
        Index("ix_machines_usage_length", text("(usage_to_us - usage_from_us)"), "usage_from_us", "usage_to_us"),
        Index(
            "ix_machines_unclosed",
            "usage_from_us",
            sqlite_where=text("usage_to_us IS NULL"),
            postgresql_where=text("usage_to_us IS NULL"),
        ),
        # 0011: the closed totals of the machines inside a report's period, by the report's
        # dimensions, read from the index alone (costs/query._closed).
        Index(
            "ix_machines_usage_totals",
            "usage_from_us",
            "usage_to_us",
            "team",
            "owner",
            "project",
            "cloud",
            "accelerator",
            "total_cost_micro",
            "total_gpu_us",
            "total_idle_micro",
            "total_idle_gpu_us",
        ),
    )


class Event(Base):
    """Append-only history: every transition and every action on a machine."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class UsageInterval(Base):
    """A stretch of time a machine's resources existed, at its frozen hourly price.

    The `*_us` / `*_micro` columns are the same facts as integers (microseconds since 1970,
    micro-dollars), derived on every ORM write (see `_derive_integers`): cost reports add them up
    in the database without parsing a time per row. `cost_micro` is the closed interval's whole
    cost under the one rounding rule (pricing.cost_micro); NULL while the interval is open."""

    __tablename__ = "usage_intervals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    price_per_hour: Mapped[Decimal] = mapped_column(Money)
    gpu_count: Mapped[int] = mapped_column(Integer)
    started_us: Mapped[int] = mapped_column(BigInteger)
    ended_us: Mapped[int | None] = mapped_column(BigInteger)
    price_micro: Mapped[int] = mapped_column(BigInteger)
    cost_micro: Mapped[int | None] = mapped_column(BigInteger)

    # Leads with machine_id (the foreign key's index) and covers what a cost report reads, so a
    # report is one ordered index scan grouped per machine, without a sort or a table lookup.
    __table_args__ = (
        Index(
            "ix_usage_intervals_machine_cost",
            "machine_id",
            "started_us",
            "ended_us",
            "price_micro",
            "gpu_count",
            "cost_micro",
        ),
    )


@event.listens_for(UsageInterval, "before_insert")
@event.listens_for(UsageInterval, "before_update")
def _derive_integers(mapper: Any, connection: Any, interval: UsageInterval) -> None:
    interval.started_us = epoch_us(interval.started_at)
    interval.price_micro = price_micro(interval.price_per_hour)
    if interval.ended_at is None:
        interval.ended_us = interval.cost_micro = None
    else:
        interval.ended_us = epoch_us(interval.ended_at)
        interval.cost_micro = cost_micro(interval.price_micro, interval.ended_us - interval.started_us)


class GpuLease(Base):
    """An on-prem GPU held by a machine. The partial unique index forbids double-booking."""

    __tablename__ = "gpu_leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), index=True)
    host: Mapped[str] = mapped_column(String(128))
    gpu_index: Mapped[int] = mapped_column(Integer)
    leased_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "uq_gpu_leases_active",
            "host",
            "gpu_index",
            unique=True,
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
    )


class HostInventory(Base):
    """The last GPU detection of a pool host."""

    __tablename__ = "host_inventory"

    host: Mapped[str] = mapped_column(String(128), primary_key=True)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)


class UtilizationSample(Base):
    """One reading of a machine's activity (agent, cloud metrics or nvidia-smi), covering
    [at - interval_seconds, at]. `active` is None when the signals could not be read, which
    counts as active (DESIGN invariant 5). Costs read idle GPU-hours from these."""

    __tablename__ = "utilization_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    interval_seconds: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))
    gpu_util_percent: Mapped[float | None] = mapped_column(Float)
    gpu_mem_percent: Mapped[float | None] = mapped_column(Float)
    active: Mapped[bool | None] = mapped_column(Boolean)
    signals: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_utilization_samples_machine_at", "machine_id", "at"),)


class Notification(Base):
    """A message sent once (reaper warnings, budget alerts): the unique key makes "once" hold
    across processes and restarts. `at` is when it was recorded (a reaper warning's grace runs
    from there); one not delivered yet (no webhook, or the webhook failed) is tried again later,
    by the process that sets `sending_since` (a claim, cleared after the attempt)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReaperAction(Base):
    """A reaper action on a resource that has no machine row (an orphan found by its tags):
    events belong to a machine, so these keep the trace: the resource, what was done, why, and
    how it ended. Orphans of an ended machine also get an event on that machine."""

    __tablename__ = "reaper_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    cloud: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(255), index=True)
    location: Mapped[str | None] = mapped_column(String(128))
    machine_tag: Mapped[str | None] = mapped_column(String(64), index=True)  # its deepops-machine tag
    action: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # done | failed
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_reaper_actions_at", "at"),)


class InstallationSetting(Base):
    """Facts about this installation, e.g. `installation_id`, generated once and tagged on
    every cloud resource so two deployments can share an account without touching each other."""

    __tablename__ = "installation"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ApiUser(Base):
    """A person the team server knows: their team and role (member, team-admin, it-admin, finance)."""

    __tablename__ = "api_users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    team: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """An API token: only its SHA-256 is kept; the token itself is shown once when created."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("api_users.name"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SshKey(Base):
    """A user's public key for sessions through the team server (`deepops ssh`): the server lets
    it into a machine's sshd for one session that user opens. Never a private key."""

    __tablename__ = "ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)  # an API user, or an OIDC one
    fingerprint: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ux_ssh_keys_user_fingerprint", "user_name", "fingerprint", unique=True),)


class AuditEntry(Base):
    """One mutating request to the team server: who, what, when and the outcome."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    status_code: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    client: Mapped[str | None] = mapped_column(String(64))

    # --since reads by time, --user by actor (newest first: the id), migration 0010_audit_actor
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_actor", "actor", "id"))
