"""How machines look in JSON and tables (the JSON keys are an interface other tools rely on)."""

from dataclasses import dataclass, field, fields
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


@dataclass
class EventView:
    at: datetime | None
    kind: str
    from_status: str | None
    to_status: str | None
    reason: str | None

    @classmethod
    def of(cls, e: Any) -> "EventView":
        return cls(e.at, e.kind, e.from_status, e.to_status, e.reason)


@dataclass
class MachineView:
    """The one shape a machine has on its way to the views, whichever way it came: a ledger row
    (ORM or ledger.quickread), or the server's JSON in team mode. The attribute names are the
    ledger's, so machine_json, show_json and machine_row render all of them alike."""

    id: str
    name: str | None
    status: str
    status_reason: str | None
    cloud: str
    region: str | None
    host: str | None
    owner: str
    team: str
    project: str
    image: str
    image_pin: str | None
    accelerator: str | None
    gpu_count: int | None
    request: dict[str, Any]
    plan: dict[str, Any]
    price_per_hour: Decimal
    created_at: datetime
    ready_at: datetime | None
    expires_at: datetime
    ended_at: datetime | None
    cost: Decimal | None = None
    price_breakdown: dict[str, Any] = field(default_factory=dict)
    provider_refs: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    events: list[EventView] | None = None  # None: not read (a listing)
    source: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # the server's JSON

    @classmethod
    def of(cls, m: Any, cost: Decimal | None = None, events: list[Any] | None = None) -> "MachineView":
        """From a ledger row (ORM Machine or a quickread row; columns a listing skips stay empty)."""
        values = {n: getattr(m, n, None) for n in _ROW_FIELDS}
        for name in ("request", "plan", "price_breakdown", "provider_refs"):
            values[name] = values[name] or {}
        history = None if events is None else [EventView.of(e) for e in events]
        return cls(**values, cost=cost, events=history)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MachineView":
        """From machine_json or show_json's output (the server's answers in team mode)."""
        request = data.get("request") or {
            "gpus": data.get("gpus"),
            "ttl": data.get("ttl_seconds"),
            "idle_timeout": data.get("idle_timeout_seconds"),
        }
        stored = data.get("price_per_hour_stored") or data["price_per_hour"]
        events = data.get("events")
        return cls(
            **{k: data.get(k) for k in _PLAIN},
            request=request,
            plan=data.get("plan") or {"gpu_indexes": data.get("gpu_indexes")},
            price_per_hour=Decimal(str(stored)),
            created_at=_when(data.get("created_at")),  # type: ignore[arg-type]
            ready_at=_when(data.get("ready_at")),
            expires_at=_when(data.get("expires_at")),  # type: ignore[arg-type]
            ended_at=_when(data.get("ended_at")),
            cost=Decimal(data["cost_usd"]) if data.get("cost_usd") is not None else None,
            price_breakdown=data.get("price") or {},
            provider_refs=data.get("provider_refs") or {},
            manifest=data.get("manifest"),
            validation=data.get("validation"),
            events=None
            if events is None
            else [EventView(_when(e["at"]), e["kind"], e["from"], e["to"], e["reason"]) for e in events],
            source=data,
        )

    def to_json(self) -> dict[str, Any]:
        """What `ls --json` and GET /machines give for it."""
        return machine_json(self, self.cost)

    def detail_json(self) -> dict[str, Any]:
        """What `show --json` and GET /machines/{id} give for it."""
        return show_json(self, self.cost, self.events or [])


_ROW_FIELDS = tuple(f.name for f in fields(MachineView) if f.name not in ("cost", "events", "source"))
_PLAIN = ("id", "name", "status", "status_reason", "cloud", "region", "host", "owner", "team", "project")
_PLAIN += ("image", "image_pin", "accelerator", "gpu_count")


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def show_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """`deepops show` as words, from show_json's output (local or from the server): money in the one
    format (deepops_infra/money.py), the price breakdown in words, `-` for what is not known."""
    from deepops_infra.money import NONE, money, price_words, rate

    def text(value: Any) -> str:
        return NONE if value is None or value == "" else str(value)

    manifest = data.get("manifest") or {}
    packages = manifest.get("packages") or {}
    request, plan = data.get("request") or {}, data.get("plan") or {}
    indexes = plan.get("gpu_indexes")
    words = price_words(data.get("price"))
    price = rate(data.get("price_per_hour_stored") or data.get("price_per_hour"))
    pin = data.get("image_pin")
    return [
        ("owner/team/project", f"{data['owner']} / {data['team']} / {data['project']}"),
        ("target", f"{data['cloud']} {data.get('host') or data.get('region') or ''}".strip()),
        ("gpus", text(request.get("gpus")) + (f" (indexes {', '.join(map(str, indexes))})" if indexes else "")),
        ("image", f"{data['image']}" + (f" pinned {pin}" if pin else "")),
        ("price (frozen)", f"{price} ({words})" if words else price),
        ("cost so far", money(data.get("cost_usd"))),
        ("created / ready", f"{text(data.get('created_at'))} / {text(data.get('ready_at'))}"),
        ("expires / ended", f"{text(data.get('expires_at'))} / {text(data.get('ended_at'))}"),
        ("workspace", text((data.get("provider_refs") or {}).get("workspace"))),
        ("driver", text(manifest.get("driver_version"))),
        ("python", text(manifest.get("python"))),
        ("packages", ", ".join(f"{k}=={v}" for k, v in packages.items()) or NONE),
    ]
