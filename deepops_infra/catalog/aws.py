"""Rebuild the AWS part of the catalog from AWS itself.

- `ec2.describe_instance_types` (per region, paginated): which types have NVIDIA GPUs, how many,
  of which model and memory, with their vCPUs and memory;
- `pricing.get_products` (Price List API, paginated): the Linux, shared-tenancy on-demand price
  per hour of those types in the region;
- `ec2.describe_spot_price_history` (paginated, latest only): the lowest current spot price
  across the region's availability zones.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from deepops_infra.accelerators import model_of
from deepops_infra.catalog import Offering
from deepops_infra.providers.aws.clients import Clients

PRICE_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}


def gpu_types(ec2: Any) -> dict[str, dict[str, Any]]:
    """instance type -> {accelerator, count, vcpus, memory_gib} for the region's NVIDIA GPU types."""
    found = {}
    for page in ec2.get_paginator("describe_instance_types").paginate():
        for item in page.get("InstanceTypes", []):
            gpus = (item.get("GpuInfo") or {}).get("Gpus") or []
            if not gpus or gpus[0].get("Manufacturer") != "NVIDIA":
                continue
            gpu = gpus[0]
            model = model_of(f"NVIDIA {gpu['Name']}", gpu.get("MemoryInfo", {}).get("SizeInMiB"))
            if model is None:
                continue
            found[item["InstanceType"]] = {
                "accelerator": model,
                "count": sum(g.get("Count", 0) for g in gpus),
                "vcpus": item["VCpuInfo"]["DefaultVCpus"],
                "memory_gib": Decimal(item["MemoryInfo"]["SizeInMiB"]) / Decimal(1024),
            }
    return found


def on_demand_prices(pricing: Any, region: str, types: list[str]) -> dict[str, Decimal]:
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in PRICE_FILTERS.items()]
    filters.append({"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(sorted(types))})
    prices: dict[str, Decimal] = {}
    for page in pricing.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters):
        for text in page.get("PriceList", []):
            product = json.loads(text) if isinstance(text, str) else text
            itype = product["product"]["attributes"].get("instanceType")
            for term in (product.get("terms", {}).get("OnDemand") or {}).values():
                for dim in term.get("priceDimensions", {}).values():
                    usd = Decimal(dim["pricePerUnit"].get("USD", "0"))
                    if dim.get("unit") == "Hrs" and usd > 0 and itype in types:
                        prices[itype] = min(usd, prices.get(itype, usd)).normalize()
    return prices


def spot_prices(ec2: Any, types: list[str], now: datetime) -> dict[str, Decimal]:
    lowest: dict[str, Decimal] = {}
    paginator = ec2.get_paginator("describe_spot_price_history")
    for page in paginator.paginate(InstanceTypes=sorted(types), ProductDescriptions=["Linux/UNIX"], StartTime=now):
        for entry in page.get("SpotPriceHistory", []):
            price = Decimal(entry["SpotPrice"]).normalize()
            itype = entry["InstanceType"]
            lowest[itype] = min(price, lowest.get(itype, price))
    return lowest


def refresh(clients: Clients, regions: list[str], now: datetime | None = None) -> list[Offering]:
    now = now or datetime.now(UTC)
    offers = []
    for region in regions:
        ec2 = clients.ec2(region)
        types = gpu_types(ec2)
        if not types:
            continue
        names = sorted(types)
        demand = on_demand_prices(clients.pricing(), region, names)
        spot = spot_prices(ec2, names, now)
        for itype in names:
            if itype not in demand and itype not in spot:
                continue  # offered in no way we can price: left out
            t = types[itype]
            offers.append(
                Offering(
                    cloud="aws",
                    region=region,
                    instance_type=itype,
                    accelerator=t["accelerator"],
                    accelerator_count=t["count"],
                    vcpus=t["vcpus"],
                    memory_gib=t["memory_gib"].normalize(),
                    price_per_hour=demand.get(itype),
                    spot_price_per_hour=spot.get(itype),
                )
            )
    return offers
