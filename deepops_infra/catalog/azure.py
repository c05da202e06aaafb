"""Rebuild the Azure part of the catalog from the Retail Prices API (no credentials needed).

Per region, the Virtual Machines `Consumption` meters of the known GPU sizes: Linux only (the
Windows meters' product names end in " Windows"), Low Priority left out, spot from the meters whose
SKU name ends in " Spot". Every NextPageLink is followed.
"""

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from deepops_infra.catalog import Offering
from deepops_infra.catalog.shapes import Shape

PRICES_URL = "https://prices.azure.com/api/retail/prices"


def price_filter(region: str) -> str:
    return (
        "serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
        f"and armRegionName eq '{region}' and currencyCode eq 'USD'"
    )


def market(item: dict[str, Any]) -> str | None:
    """'demand', 'spot', or None for what deepops does not buy (Windows, Low Priority, other units)."""
    if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
        return None
    if str(item.get("productName", "")).endswith("Windows"):
        return None
    sku = str(item.get("skuName", ""))
    if sku.endswith("Low Priority"):
        return None
    return "spot" if sku.endswith(" Spot") else "demand"


def refresh(
    pages: Callable[[str], Iterable[dict[str, Any]]], shapes: dict[str, Shape], regions: list[str]
) -> list[Offering]:
    """pages(region) yields the Items of every page for that region's filter."""
    offers = []
    for region in regions:
        found: dict[tuple[str, str], Decimal] = {}
        for item in pages(region):
            kind = market(item)
            size = item.get("armSkuName", "")
            if kind is None or size not in shapes or item.get("armRegionName") != region:
                continue
            value = Decimal(str(item["retailPrice"])).normalize()
            if value > 0:
                found[(kind, size)] = min(value, found.get((kind, size), value))
        for size, shape in sorted(shapes.items()):
            demand, spot = found.get(("demand", size)), found.get(("spot", size))
            if demand is not None or spot is not None:
                offers.append(shape.offer("azure", region, demand, spot))
    return offers


def retail_items(
    get_json: Callable[[str, dict[str, str] | None], dict[str, Any]], base: str, region: str
) -> Iterable[dict[str, Any]]:
    """Every item for a region, following NextPageLink (get_json(url, params) -> the page's JSON)."""
    page = get_json(base, {"$filter": price_filter(region)})
    while True:
        yield from page.get("Items", [])
        link = page.get("NextPageLink")
        if not link:
            return
        page = get_json(link, None)
