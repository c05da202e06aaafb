"""Rebuild the GCP part of the catalog from the Cloud Billing Catalog API (services.skus.list of
Compute Engine, every page). A GPU VM's price per hour is its vCPUs at the family's core rate, its
memory at the family's RAM rate (per GiB-hour) and its GPUs at the GPU rate, in the region; spot
from the "Spot Preemptible" SKUs (usage type Preemptible). DWS, flex-start, calendar-mode,
reservation and commitment SKUs are not sold the way deepops buys, so they are skipped.
"""

import re
from collections.abc import Callable, Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from deepops_infra.catalog import Offering
from deepops_infra.catalog.shapes import Shape

COMPUTE_SERVICE = "6F81-5844-456A"  # Compute Engine in the Cloud Billing Catalog
SKIP = re.compile(r"\b(DWS|Flex[- ]?start|Calendar|Commitment|Commit|Reserved|Reservation|Sole Tenancy)\b", re.I)
USAGE = {"OnDemand": "demand", "Preemptible": "spot"}
# machine type prefix -> (core/RAM SKU family, GPU SKU name)
FAMILIES = {
    "a2-highgpu": ("A2", "Nvidia Tesla A100 GPU"),
    "a2-megagpu": ("A2", "Nvidia Tesla A100 GPU"),
    "a2-ultragpu": ("A2", "Nvidia Tesla A100 80GB GPU"),
    "a3-highgpu": ("A3", "Nvidia H100 80GB GPU"),
    "a3-megagpu": ("A3 Mega", "Nvidia H100 80GB Mega GPU"),
    "a3-ultragpu": ("A3 Ultra", "Nvidia H200 141GB GPU"),
    "g2-standard": ("G2", "Nvidia L4 GPU"),
}
SPOT_PREFIX = "Spot Preemptible "
SPOT_GPU_SUFFIX = " attached to Spot Preemptible VMs"

Rates = dict[tuple[str, str, str], Decimal]  # (market, region, rate name) -> USD per unit-hour


def unit_price(sku: dict[str, Any]) -> Decimal | None:
    """USD per usage unit of the SKU's latest pricing (the tier that starts at 0)."""
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    tiers = infos[-1].get("pricingExpression", {}).get("tieredRates") or []
    tier = next((t for t in tiers if float(t.get("startUsageAmount", 0)) == 0), None)
    if tier is None:
        return None
    money = tier["unitPrice"]
    return Decimal(str(money.get("units") or "0")) + Decimal(int(money.get("nanos") or 0)) / Decimal(10**9)


def rate_name(description: str, market: str) -> str | None:
    """`A2 Instance Core` / `A2 Instance Ram` / `Nvidia Tesla A100 GPU`, with the market's wording removed."""
    text = description.split(" running in ", 1)[0]
    if market == "spot":
        if text.startswith(SPOT_PREFIX):
            text = text[len(SPOT_PREFIX) :]
        elif text.endswith(SPOT_GPU_SUFFIX):
            text = text[: -len(SPOT_GPU_SUFFIX)]
        else:
            return None
    elif text.startswith(SPOT_PREFIX) or "Preemptible" in text:
        return None
    return text


def rates(skus: Iterable[dict[str, Any]], regions: set[str]) -> Rates:
    found: Rates = {}
    for sku in skus:
        description = sku.get("description", "")
        category = sku.get("category", {})
        market = USAGE.get(category.get("usageType", ""))
        if market is None or SKIP.search(description) or category.get("resourceFamily") != "Compute":
            continue
        name = rate_name(description, market)
        price = unit_price(sku)
        if name is None or price is None:
            continue
        for region in sku.get("serviceRegions", []):
            if region in regions:
                found[(market, region, name)] = price
    return found


def price(shape: Shape, region: str, market: str, table: Rates) -> Decimal | None:
    prefix = shape.instance_type.rsplit("-", 1)[0]
    if prefix not in FAMILIES:
        return None
    family, gpu = FAMILIES[prefix]
    parts = [
        (f"{family} Instance Core", Decimal(shape.vcpus)),
        (f"{family} Instance Ram", shape.memory_gib),
        (gpu, Decimal(shape.accelerator_count)),
    ]
    total = Decimal(0)
    for name, quantity in parts:
        rate = table.get((market, region, name))
        if rate is None:
            return None  # not sold this way here
        total += rate * quantity
    return total.quantize(Decimal("0.000001"), ROUND_HALF_UP).normalize()


def refresh(
    list_skus: Callable[[], Iterable[dict[str, Any]]], shapes: dict[str, Shape], regions: list[str]
) -> list[Offering]:
    table = rates(list_skus(), set(regions))
    offers = []
    for region in regions:
        for shape in sorted(shapes.values(), key=lambda s: s.instance_type):
            demand, spot = price(shape, region, "demand", table), price(shape, region, "spot", table)
            if demand is not None or spot is not None:
                offers.append(shape.offer("gcp", region, demand, spot))
    return offers


def billing_skus(get_json: Callable[[str, dict[str, str]], dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every Compute Engine SKU, page by page (get_json(path, params) -> the page's JSON)."""
    params = {"currencyCode": "USD", "pageSize": "5000"}
    while True:
        page = get_json(f"/v1/services/{COMPUTE_SERVICE}/skus", params)
        yield from page.get("skus", [])
        token = page.get("nextPageToken")
        if not token:
            return
        params = {**params, "pageToken": token}
