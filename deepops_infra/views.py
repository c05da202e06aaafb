"""How machines look in JSON and tables (the JSON keys are an interface other tools rely on)."""

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from deepops_infra.durations import format_duration
from deepops_infra.pricing import decimal_text, dollars, price_text

if TYPE_CHECKING:  # views also render the plain rows of ledger.quickread
    from deepops_infra.ledger.schema import Event, Machine


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def machine_json(m: "Machine", cost: Decimal | None = None) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "status": m.status,
        "status_reason": m.status_reason,
        "cloud": m.cloud,
        "region": m.region,
        "host": m.host,
        "owner": m.owner,
        "team": m.team,
        "project": m.project,
        "image": m.image,
        "image_pin": m.image_pin,
        "gpus": m.request.get("gpus"),
        "accelerator": m.accelerator,
        "gpu_count": m.gpu_count,
        "gpu_indexes": m.plan.get("gpu_indexes"),
        "created_at": _iso(m.created_at),
        "ready_at": _iso(m.ready_at),
        "expires_at": _iso(m.expires_at),
        "ended_at": _iso(m.ended_at),
        "ttl_seconds": m.request.get("ttl"),
        "idle_timeout_seconds": m.request.get("idle_timeout"),
        "price_per_hour": decimal_text(m.price_per_hour),
        "cost_usd": str(cost) if cost is not None else None,
    }


def show_json(m: "Machine", spent: Decimal | None, events: "list[Event]") -> dict[str, Any]:
    """`deepops show --json` and GET /machines/{id}: the listing's fields, what was asked and
    planned, what the machine reported, and its history."""
    history = [
        {"at": _iso(e.at), "kind": e.kind, "from": e.from_status, "to": e.to_status, "reason": e.reason} for e in events
    ]
    return machine_json(m, spent) | {
        "request": m.request,
        "plan": m.plan,
        "price": m.price_breakdown,
        "provider_refs": {k: v for k, v in (m.provider_refs or {}).items() if k != "host_facts"},
        "manifest": m.manifest,
        "validation": m.validation,
        "events": history,
    }


def time_left(m: "Machine", now: datetime) -> str:
    if m.ended_at:
        return "-"
    return format_duration(m.expires_at - now) if m.expires_at > now else "expired"


def machine_row(m: "Machine", cost: Decimal, now: datetime) -> list[str]:
    return [
        m.id,
        m.name or "",
        m.status,
        m.cloud,
        m.host or m.region or "",
        m.request.get("gpus", ""),
        m.owner,
        m.team,
        time_left(m, now),
        f"{price_text(m.price_per_hour)}/h",
        dollars(cost),
    ]


MACHINE_COLUMNS = ["ID", "NAME", "STATUS", "CLOUD", "WHERE", "GPUS", "OWNER", "TEAM", "LEFT", "PRICE", "COST"]
