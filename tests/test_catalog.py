"""The shipped catalog, and `catalog refresh --cloud aws` against Price List / EC2 responses served
to real botocore clients (Stubber checks each request against the service model)."""

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.catalog import COLUMNS, Offering, load_catalog, parse_rows, refreshed_path, write_rows

FIXTURES = Path(__file__).parent / "fixtures" / "aws"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_shipped_catalog_is_the_reference_data_with_its_source() -> None:
    offers = load_catalog()
    source = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpu_prices.csv"
    if source.exists():
        assert len(offers) == len(source.read_text().strip().splitlines()) - 1
    text = (Path(__file__).resolve().parents[1] / "deepops_infra" / "catalog" / "data" / "offerings.csv").read_text()
    assert "gpu_prices.csv" in text.splitlines()[0]
    p5 = next(o for o in offers if (o.cloud, o.region, o.instance_type) == ("aws", "us-west-2", "p5.48xlarge"))
    assert (p5.accelerator, p5.accelerator_count, p5.vcpus) == ("H100-80GB", 8, 192)
    assert (p5.price_per_hour, p5.spot_price_per_hour) == (Decimal("55.04"), Decimal("12.6935"))
    p5e = next(o for o in offers if o.instance_type == "p5e.48xlarge")
    assert p5e.price_per_hour is None and p5e.spot_price_per_hour == Decimal("19.5387")
    assert {o.cloud for o in offers} == {"aws", "gcp", "azure"}


def test_rows_round_trip_and_bad_rows_name_their_line() -> None:
    offers = load_catalog()
    again = parse_rows(write_rows(offers, "test"), "x")
    assert sorted(again, key=str) == sorted(offers, key=str)
    with pytest.raises(ValueError, match=r"x row 2: unknown accelerator 'Z9'"):
        parse_rows(",".join(COLUMNS) + "\naws,r,t,Z9,1,1,1,1,\n", "x")


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Any:
    from botocore.stub import ANY, Stubber

    from deepops_infra.providers.aws.clients import Clients
    from deepops_infra.providers.aws.settings import AwsSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    clients = Clients(AwsSettings())
    ec2, pricing = clients.ec2("us-east-1"), clients.pricing()
    ec2_stub, pricing_stub = Stubber(ec2), Stubber(pricing)
    pages = fixture("describe_instance_types.json")
    ec2_stub.add_response("describe_instance_types", pages[0], {})
    ec2_stub.add_response("describe_instance_types", pages[1], {"NextToken": "page-2"})
    gpu_types = ["g5.xlarge", "p4d.24xlarge", "p5.48xlarge", "p5e.48xlarge"]
    filters = [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
        {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
        {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
        {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
        {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
        {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"},
        {"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(gpu_types)},
    ]
    prices = fixture("pricing_get_products.json")
    pricing_stub.add_response("get_products", prices[0], {"ServiceCode": "AmazonEC2", "Filters": filters})
    pricing_stub.add_response(
        "get_products", prices[1], {"ServiceCode": "AmazonEC2", "Filters": filters, "NextToken": "prices-2"}
    )
    spot = fixture("describe_spot_price_history.json")
    for entry in spot["SpotPriceHistory"]:
        entry["Timestamp"] = datetime.fromisoformat(entry["Timestamp"].replace("Z", "+00:00"))
    ec2_stub.add_response(
        "describe_spot_price_history",
        spot,
        {"InstanceTypes": gpu_types, "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY},
    )
    with ec2_stub, pricing_stub:
        yield clients
        ec2_stub.assert_no_pending_responses()
        pricing_stub.assert_no_pending_responses()


def test_refresh_builds_offers_from_the_three_apis(stubbed: Any) -> None:
    from deepops_infra.catalog.aws import refresh

    offers = {o.instance_type: o for o in refresh(stubbed, ["us-east-1"], now=NOW)}
    # m5.large has no GPU, g4ad.xlarge is AMD: out. p5e.48xlarge has no on-demand price but a spot one.
    assert sorted(offers) == ["g5.xlarge", "p4d.24xlarge", "p5.48xlarge", "p5e.48xlarge"]
    assert offers["p5.48xlarge"] == Offering(
        "aws", "us-east-1", "p5.48xlarge", "H100-80GB", 8, 192, Decimal(2048), Decimal("55.04"), Decimal("17.6289")
    )  # spot: the lower of 18.1002 (1a) and 17.6289 (1b); the Reserved 30.00 term is ignored
    assert offers["g5.xlarge"] == Offering(
        "aws", "us-east-1", "g5.xlarge", "A10G", 1, 4, Decimal(16), Decimal("1.006"), Decimal("0.4246")
    )
    assert offers["p4d.24xlarge"].accelerator == "A100-40GB"  # 40960 MiB
    assert offers["p4d.24xlarge"].memory_gib == Decimal(1152)
    assert offers["p4d.24xlarge"].spot_price_per_hour is None
    assert (offers["p5e.48xlarge"].accelerator, offers["p5e.48xlarge"].price_per_hour) == ("H200", None)


def test_a_refreshed_file_replaces_only_its_cloud(tmp_path: Path) -> None:
    shipped = load_catalog()
    mine = Offering("aws", "us-east-1", "g5.xlarge", "A10G", 1, 4, Decimal(16), Decimal("0.999"), None)
    path = refreshed_path(tmp_path, "aws")
    path.parent.mkdir(parents=True)
    path.write_text(write_rows([mine], "refreshed"))
    merged = load_catalog(tmp_path)
    assert [o for o in merged if o.cloud == "aws"] == [mine]
    assert [o for o in merged if o.cloud != "aws"] == [o for o in shipped if o.cloud != "aws"]


def test_gpus_command_filters_and_prints_json(sqlite_deepops: Any) -> None:
    deepops = sqlite_deepops
    out = deepops.run("gpus", "--cloud", "aws", "--region", "us-east-1", "--accelerator", "a100", "--json", check=True)
    rows = json.loads(out.stdout)
    assert [(r["instance_type"], r["accelerator"], r["price_per_hour"]) for r in rows] == [
        ("p4d.24xlarge", "A100-40GB", "21.95764"),
        ("p4de.24xlarge", "A100-80GB", "27.44705"),
    ]
    bad = deepops.run("gpus", "--accelerator", "Z80")
    assert bad.returncode == 2 and "unknown GPU model 'Z80'" in bad.stderr
    bad = deepops.run("gpus", "--cloud", "aws", "--region", "mars-1")
    assert bad.returncode == 2 and "--region mars-1: no offerings there" in bad.stderr
