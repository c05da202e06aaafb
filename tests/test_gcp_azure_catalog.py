"""`deepops catalog refresh --cloud gcp|azure` end to end against recorded pricing API answers on a
local server (Cloud Billing Catalog with a service-account token; Retail Prices without one).
Every expected price is computed by hand in the comments."""

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.catalog import load_catalog
from deepops_infra.catalog.azure import market
from deepops_infra.catalog.gcp import rate_name
from tests.fake_api import Api, Seen, fixture, serve

SKUS = "/v1/services/6F81-5844-456A/skus"


@pytest.fixture
def api() -> Iterator[Api]:
    with serve() as api:
        yield api


def service_account(tmp_path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "gpu-lab",
                "private_key_id": "0123456789abcdef",
                "private_key": pem,
                "client_email": "deepops@gpu-lab.iam.gserviceaccount.com",
                "client_id": "100000000000000000001",
                "token_uri": token_uri,
            }
        )
    )
    path.chmod(0o600)
    return path


def billing(seen: Seen) -> tuple[int, Any, dict[str, str]] | None:
    if seen.path == "/token":
        return 200, {"access_token": "ya29.test", "expires_in": 3600, "token_type": "Bearer"}, {}
    if seen.path != SKUS:
        return None
    token = seen.query.get("pageToken", [""])[0]
    return 200, fixture("gcp", "billing_skus_page2.json" if token else "billing_skus_page1.json"), {}


def test_gcp_refresh_prices_vcpu_ram_and_gpus_and_skips_dws_flex_calendar_commitments(
    sqlite_deepops: Any, api: Api, tmp_path: Path
) -> None:
    api.on(billing)
    sqlite_deepops.home.mkdir(parents=True)
    (sqlite_deepops.home / "config.yaml").write_text(
        f"gcp:\n  project: gpu-lab\n  regions: [us-central1, europe-west4]\n  endpoints:\n    billing: {api.url}\n"
    )
    sqlite_deepops.env["GOOGLE_APPLICATION_CREDENTIALS"] = str(service_account(tmp_path, f"{api.url}/token"))
    result = sqlite_deepops.run("catalog", "refresh", "--cloud", "gcp", check=True)
    assert "gcp offerings in 2 regions written to" in result.stderr
    calls = [s for s in api.seen if s.path == SKUS]
    assert len(calls) == 2 and calls[0].query["currencyCode"] == ["USD"]
    assert all(s.headers["authorization"] == "Bearer ya29.test" for s in calls)
    gcp = {(o.region, o.instance_type): o for o in load_catalog(sqlite_deepops.home) if o.cloud == "gcp"}
    a2 = gcp[("us-central1", "a2-highgpu-1g")]
    # 12 vCPU x 0.031611 + 85 GiB x 0.004237 + 1 A100 x 2.933908 = 0.379332 + 0.360145 + 2.933908
    assert a2.price_per_hour == Decimal("3.673385")  # not the DWS GPU rate 1.466954, not Commit1Yr
    # spot: 12 x 0.012644 + 85 x 0.001695 + 1.173563 = 0.151728 + 0.144075 + 1.173563
    assert a2.spot_price_per_hour == Decimal("1.469366")
    # a2-megagpu-16g: 96 x 0.031611 + 1360 x 0.004237 + 16 x 2.933908 = 3.034656 + 5.76232 + 46.942528
    assert gcp[("us-central1", "a2-megagpu-16g")].price_per_hour == Decimal("55.739504")
    a3 = gcp[("us-central1", "a3-highgpu-8g")]
    # 208 x 0.03 + 1872 x 0.004 + 8 x 4.5 = 6.24 + 7.488 + 36 (not the Flex-start 2.25 or Calendar 2.7)
    assert a3.price_per_hour == Decimal("49.728")
    assert a3.spot_price_per_hour is None  # no spot GPU SKU: not sold as spot there
    # europe-west4, on page 2: 12 x 0.03484 + 85 x 0.00467 + 3.2 = 0.41808 + 0.39695 + 3.2
    eu = gcp[("europe-west4", "a2-highgpu-1g")]
    assert (eu.price_per_hour, eu.spot_price_per_hour) == (Decimal("4.01503"), None)
    # No SKU for A100 80GB, L4, A3 Mega: those types are left out rather than priced wrong.
    assert not {t for _, t in gcp if t.startswith(("a2-ultragpu", "g2-", "a3-megagpu"))}
    assert {r for r, _ in gcp} == {"us-central1", "europe-west4"}


def test_gcp_sku_names_by_market() -> None:
    assert rate_name("Spot Preemptible A2 Instance Core running in Americas", "spot") == "A2 Instance Core"
    assert rate_name("Nvidia L4 GPU attached to Spot Preemptible VMs running in Americas", "spot") == "Nvidia L4 GPU"
    assert rate_name("A2 Instance Core running in Americas", "spot") is None
    assert rate_name("Spot Preemptible A2 Instance Core running in Americas", "demand") is None


def retail(api: Api) -> Any:
    def route(seen: Seen) -> tuple[int, Any, dict[str, str]] | None:
        if seen.path != "/api/retail/prices":
            return None
        if seen.query.get("$skip"):
            return 200, fixture("azure", "retail_eastus_page2.json"), {}
        filt = seen.query["$filter"][0]
        if "armRegionName eq 'westus2'" in filt:
            return 200, fixture("azure", "retail_westus2.json"), {}
        page = fixture("azure", "retail_eastus_page1.json")
        page["NextPageLink"] = page["NextPageLink"].replace("https://prices.azure.com:443", api.url)
        return 200, page, {}

    return route


def test_azure_refresh_linux_consumption_and_spot_without_windows_or_low_priority(
    sqlite_deepops: Any, api: Api
) -> None:
    api.on(retail(api))
    sqlite_deepops.home.mkdir(parents=True)
    (sqlite_deepops.home / "config.yaml").write_text(f"azure:\n  endpoints:\n    prices: {api.url}\n")
    result = sqlite_deepops.run(
        "catalog", "refresh", "--cloud", "azure", "--region", "eastus", "--region", "westus2", check=True
    )
    assert "azure offerings in 2 regions written to" in result.stderr
    first = next(s for s in api.seen if not s.query.get("$skip"))
    assert first.query["$filter"] == [
        "serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
        "and armRegionName eq 'eastus' and currencyCode eq 'USD'"
    ]
    assert len(api.seen) == 3  # eastus: two pages; westus2: one
    az = {(o.region, o.instance_type): o for o in load_catalog(sqlite_deepops.home) if o.cloud == "azure"}
    a100 = az[("eastus", "Standard_NC24ads_A100_v4")]
    # Linux 3.673, Spot 0.44443; not Windows 3.857/0.62843, Low Priority 0.7346 or the reservation
    assert (a100.price_per_hour, a100.spot_price_per_hour) == (Decimal("3.673"), Decimal("0.44443"))
    assert (a100.accelerator, a100.accelerator_count) == ("A100-80GB", 1)
    assert az[("westus2", "Standard_NC24ads_A100_v4")].spot_price_per_hour == Decimal("0.61596")
    h100 = az[("eastus", "Standard_NC80adis_H100_v5")]
    assert (h100.price_per_hour, h100.spot_price_per_hour) == (Decimal("13.96"), None)
    assert az[("eastus", "Standard_NV36adms_A10_v5")].spot_price_per_hour == Decimal("1.13")
    assert ("eastus", "Standard_D4s_v5") not in az  # no GPU
    assert len(az) == 4


def test_azure_meter_markets() -> None:
    base = {"type": "Consumption", "unitOfMeasure": "1 Hour", "productName": "Virtual Machines NCads A100 v4 Series"}
    assert market(base | {"skuName": "NC24ads A100 v4"}) == "demand"
    assert market(base | {"skuName": "NC24ads A100 v4 Spot"}) == "spot"
    assert market(base | {"skuName": "NC24ads A100 v4 Low Priority"}) is None
    assert (
        market(base | {"skuName": "NC24ads A100 v4", "productName": "Virtual Machines NCads A100 v4 Series Windows"})
        is None
    )
    assert market(base | {"skuName": "NC24ads A100 v4", "type": "DevTestConsumption"}) is None


def test_a_failing_pricing_api_leaves_the_catalog_as_it_was(sqlite_deepops: Any, api: Api) -> None:
    api.on(lambda s: (503, {"error": "down"}, {}))
    sqlite_deepops.home.mkdir(parents=True)
    (sqlite_deepops.home / "config.yaml").write_text(f"azure:\n  endpoints:\n    prices: {api.url}\n")
    result = sqlite_deepops.run("catalog", "refresh", "--cloud", "azure", "--region", "eastus")
    assert result.returncode != 0 and "refreshing azure prices" in result.stderr
    assert not (sqlite_deepops.home / "catalog" / "azure.csv").exists()
