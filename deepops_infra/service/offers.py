"""A launch's fallback offers, kept in the ledger: the offers `record` did not take, tried in
order when a create fails for capacity or quota. They are an event of the machine (kind
`offers`), so whichever process launches it (the CLI, a server worker, a later retry) reads the
same list, and nothing is handed over in memory."""

from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.ledger.schema import Machine
    from deepops_infra.providers.base import Plan

OFFERS_EVENT = "offers"


def plan_record(plan: "Plan") -> dict[str, Any]:
    """A plan as JSON that `plan_from_record` turns back into the same plan."""
    return {
        "cloud": plan.cloud,
        "region": plan.region,
        "host": plan.host,
        "instance_type": plan.instance_type,
        "accelerator": plan.accelerator,
        "accelerator_count": plan.accelerator_count,
        "image_pin": plan.image_pin,
        "price": {"per_hour": str(plan.price.per_hour), "parts": plan.price.parts},
        "details": plan.details,
    }


def plan_from_record(data: dict[str, Any]) -> "Plan":
    from deepops_infra.pricing import Price
    from deepops_infra.providers.base import Plan

    price = Price(per_hour=Decimal(data["price"]["per_hour"]), parts=dict(data["price"]["parts"]))
    fields = {k: data[k] for k in ("cloud", "region", "host", "instance_type", "accelerator", "image_pin")}
    return Plan(**fields, accelerator_count=int(data["accelerator_count"]), price=price, details=data["details"])


def fallbacks(plans: "list[Plan]", chosen: "Plan") -> "list[Plan]":
    """The offers to try after `chosen`, in order: the same target's other places (another host,
    region or instance type; the chosen one again would fail the same way)."""

    def place(p: "Plan") -> tuple[Any, ...]:
        return (p.cloud, p.region, p.host, p.instance_type)

    return [p for p in plans if p.cloud == chosen.cloud and place(p) != place(chosen)]


def keep(session: "Session", machine: "Machine", fallbacks: "list[Plan]") -> None:
    """Record the fallback offers with the machine (in the transaction that records it); none: no event."""
    from deepops_infra.ledger import store

    if not fallbacks:
        return
    offers = [plan_record(p) for p in fallbacks]
    reason = f"{len(offers)} fallback offer(s) kept for a capacity retry"
    store.add_event(session, machine, OFFERS_EVENT, reason, data={"offers": offers})


def kept(session: "Session", machine_id: str) -> "list[Plan]":
    """The fallback offers recorded with the machine (the latest record), oldest first."""
    from sqlalchemy import select

    from deepops_infra.ledger.schema import Event

    query = select(Event.data).where(Event.machine_id == machine_id, Event.kind == OFFERS_EVENT)
    found = session.execute(query.order_by(Event.id.desc()).limit(1)).first()
    if found is None or not found[0]:
        return []
    return [plan_from_record(d) for d in found[0].get("offers", [])]
