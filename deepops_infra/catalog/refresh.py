"""`deepops catalog refresh --cloud gcp|azure`: fetch, price the known GPU shapes, write
$DEEPOPS_HOME/catalog/<cloud>.csv atomically (the catalog is left as it was on any failure)."""

import json
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepops_infra.catalog import Offering, refreshed_path, write_rows
from deepops_infra.catalog.shapes import shapes, shipped_regions
from deepops_infra.config import Settings
from deepops_infra.errors import OperationError, UserError

BILLING = "https://cloudbilling.googleapis.com"
TIMEOUT_S = 60


def _get_json(url: str, params: dict[str, str] | None) -> dict[str, Any]:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "deepops-infra"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        return dict(json.loads(answer.read()))


def fetch_gcp(settings: Settings, regions: list[str]) -> tuple[list[Offering], str]:
    from deepops_infra.catalog.gcp import billing_skus
    from deepops_infra.catalog.gcp import refresh as refresh_gcp
    from deepops_infra.providers.gcp.clients import Clients
    from deepops_infra.providers.gcp.settings import gcp_settings

    gcp = gcp_settings(settings)
    clients = Clients(gcp)
    ok, detail = clients.has_credentials()
    if not ok:
        raise UserError(detail)
    regions = regions or list(gcp.regions or shipped_regions("gcp"))
    offers = refresh_gcp(
        lambda: billing_skus(lambda path, params: clients.get_json("billing", BILLING, path, params)),
        shapes("gcp"),
        regions,
    )
    return offers, f"the Cloud Billing Catalog API ({', '.join(regions)})"


def fetch_azure(settings: Settings, regions: list[str]) -> tuple[list[Offering], str]:
    from deepops_infra.catalog.azure import PRICES_URL, retail_items
    from deepops_infra.catalog.azure import refresh as refresh_azure
    from deepops_infra.providers.azure.settings import azure_settings

    az = azure_settings(settings)
    base = az.endpoints.get("prices")
    url = f"{base}/api/retail/prices" if base else PRICES_URL
    regions = regions or list(az.regions or shipped_regions("azure"))
    offers = refresh_azure(lambda region: retail_items(_get_json, url, region), shapes("azure"), regions)
    return offers, f"the Retail Prices API ({', '.join(regions)})"


def refresh_cloud(settings: Settings, cloud: str, regions: list[str]) -> str:
    fetch = {"gcp": fetch_gcp, "azure": fetch_azure}[cloud]
    try:
        offers, source = fetch(settings, regions)
    except (OSError, ValueError) as exc:
        raise OperationError(f"refreshing {cloud} prices: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("google", "requests")):
            raise OperationError(f"refreshing {cloud} prices: {exc}") from None
        raise
    if not offers:
        raise OperationError(f"{cloud}: the pricing API answered no GPU offers; catalog left as it was")
    path = write_catalog(
        settings.ensure_home(),
        cloud,
        offers,
        f"{cloud} offerings refreshed {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} from {source}",
    )
    return f"{len(offers)} {cloud} offerings in {len({o.region for o in offers})} regions written to {path}"


def write_catalog(home: Path, cloud: str, offers: list[Offering], header: str) -> Path:
    path = refreshed_path(home, cloud)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(write_rows(offers, header))
    tmp.replace(path)
    return path
