"""Placement: the cheapest catalog offers that fit a request, across the allowed clouds and regions.

An offer fits when it has exactly the requested GPUs (model and count), is sold the way asked
(spot or on demand), lies in an allowed and enabled region, and the image has a pin there.
Every offer left out for a reason the user can act on is reported (`skipped`), and when nothing
fits the error says which of these rules removed the last offers.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from deepops_infra.catalog import Offering
from deepops_infra.errors import UserError
from deepops_infra.request import MachineRequest

# cloud -> (region -> the image's pin there, or None)
PinLookup = Callable[[str, str], str | None]


@dataclass(frozen=True)
class Candidate:
    offer: Offering
    price_per_hour: Decimal  # of the instance, spot or on demand as requested
    image_id: str


@dataclass
class Placement:
    candidates: list[Candidate]
    skipped: list[str] = field(default_factory=list)


def _what(request: MachineRequest) -> str:
    return f"{request.gpus.count} x {request.gpus.model or 'any GPU'}"


def place(
    request: MachineRequest,
    offers: Iterable[Offering],
    pins: dict[str, PinLookup],
    regions: dict[str, Sequence[str] | None] | None = None,
) -> Placement:
    """Offers that fit, cheapest first (ties: cloud, region, instance type, for a stable answer).

    `pins` holds one lookup per cloud placement may use (its keys are the allowed clouds);
    `regions` narrows a cloud to its enabled regions (None: every region in the catalog).
    """
    regions = regions or {}
    gpus = request.gpus
    if gpus.count == 0:
        raise UserError("--gpus 0: the clouds are placed by GPU offer; ask for GPUs or use --cloud onprem")
    in_clouds = [o for o in offers if o.cloud in pins]
    fitting = [o for o in in_clouds if o.matches(gpus.model, gpus.count)]
    if not fitting:
        models = [o for o in in_clouds if gpus.model is None or o.matches(gpus.model, o.accelerator_count)]
        counts = sorted({o.accelerator_count for o in models})
        clouds = "/".join(pins)
        if models:
            raise UserError(
                f"--gpus {gpus}: no {clouds} offer has exactly {_what(request)}; "
                f"{gpus.model or 'GPU'} machines come with {', '.join(map(str, counts))} GPUs"
            )
        known = sorted({o.accelerator for o in in_clouds})
        raise UserError(f"--gpus {gpus}: no {clouds} offer has {gpus.model}; offered models: {', '.join(known)}")
    skipped: list[str] = []
    if request.region:
        here = [o for o in fitting if o.region == request.region]
        if not here:
            where = sorted({o.region for o in fitting})
            raise UserError(
                f"--region {request.region}: no offer of {_what(request)} there; regions that have it: "
                + ", ".join(where)
            )
        fitting = here
    candidates: list[Candidate] = []
    no_pin: set[tuple[str, str]] = set()
    for offer in fitting:
        enabled = regions.get(offer.cloud)
        if enabled is not None and offer.region not in enabled:
            skipped.append(f"{offer.cloud} {offer.region}: region not enabled in the configuration")
            continue
        price = offer.price(request.spot)
        if price is None:
            market = "spot" if request.spot else "on-demand"
            skipped.append(f"{offer.cloud} {offer.region} {offer.instance_type}: no {market} price")
            continue
        pin = pins[offer.cloud](offer.region, request.image)
        if pin is None:
            no_pin.add((offer.cloud, offer.region))
            continue
        candidates.append(Candidate(offer, price, pin))
    skipped += [f"{cloud} {region}: image {request.image} has no pin there" for cloud, region in sorted(no_pin)]
    skipped = sorted(set(skipped))
    if not candidates:
        raise UserError(f"no offer of {_what(request)} can be used: " + "; ".join(skipped))
    candidates.sort(key=lambda c: (c.price_per_hour, c.offer.cloud, c.offer.region, c.offer.instance_type))
    return Placement(candidates, skipped)
