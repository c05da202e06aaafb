"""`deepops catalog refresh --cloud aws` and `deepops images verify` end to end: EC2 on a moto
server and the Price List API on a local HTTP server speaking its JSON protocol, both reached
through the configured endpoint overrides."""

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.catalog import load_catalog
from tests import test_aws_readpath as moto_fixtures

moto_url = moto_fixtures.moto_url
FIXTURES = Path(__file__).parent / "fixtures" / "aws"


@pytest.fixture
def pricing_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    pages = json.loads((FIXTURES / "pricing_get_products.json").read_text())
    seen: list[dict[str, Any]] = []

    class PriceList(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"target": self.headers.get("X-Amz-Target"), **body})
            page = pages[1] if body.get("NextToken") == "prices-2" else pages[0]
            data = json.dumps(page).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), PriceList)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def configure(deepops: Any, moto: str, pricing: str) -> None:
    deepops.home.mkdir(parents=True, exist_ok=True)
    (deepops.home / "config.yaml").write_text(
        f"aws:\n  regions: [us-east-1]\n  endpoint_url: {moto}\n  endpoints:\n    pricing: {pricing}\n"
    )
    deepops.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")


def test_refresh_writes_the_aws_part_from_the_apis(
    sqlite_deepops: Any, moto_url: str, pricing_url: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = pricing_url
    configure(sqlite_deepops, moto_url, url)
    result = sqlite_deepops.run("catalog", "refresh", "--cloud", "aws", check=True)
    assert "AWS offerings in 1 regions written to" in result.stderr
    assert [s["target"] for s in seen] == ["AWSPriceListService.GetProducts"] * 2  # two pages
    assert {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"} in seen[0]["Filters"]
    types = next(f for f in seen[0]["Filters"] if f["Field"] == "instanceType")
    assert types["Type"] == "ANY_OF" and "p5.48xlarge" in types["Value"].split(",")
    aws = {o.instance_type: o for o in load_catalog(sqlite_deepops.home) if o.cloud == "aws"}
    assert {o.region for o in aws.values()} == {"us-east-1"}
    assert (aws["p5.48xlarge"].accelerator, aws["p5.48xlarge"].price_per_hour) == ("H100-80GB", Decimal("55.04"))
    assert aws["g5.xlarge"].price_per_hour == Decimal("1.006")
    assert aws["p4d.24xlarge"].accelerator == "A100-40GB"
    assert all(o.accelerator_count >= 1 for o in aws.values())
    # `gpus` now shows the refreshed AWS rows, the other clouds as shipped.
    listed = json.loads(sqlite_deepops.run("gpus", "--cloud", "aws", "--json", check=True).stdout)
    assert {r["region"] for r in listed} == {"us-east-1"}
    assert json.loads(sqlite_deepops.run("gpus", "--cloud", "gcp", "--json", check=True).stdout)


def test_refresh_without_credentials_is_a_clear_error(sqlite_deepops: Any, tmp_path: Path) -> None:
    sqlite_deepops.env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        sqlite_deepops.env.pop(key, None)
    result = sqlite_deepops.run("catalog", "refresh", "--cloud", "aws")
    assert result.returncode == 2 and "no AWS credentials" in result.stderr
    assert not (sqlite_deepops.home / "catalog").exists()


def test_images_verify_reports_pins_that_do_not_exist(
    sqlite_deepops: Any, moto_url: str, pricing_url: tuple[str, list[dict[str, Any]]]
) -> None:
    configure(sqlite_deepops, moto_url, pricing_url[0])
    result = sqlite_deepops.run("images", "verify", "--cloud", "aws", "--json")
    rows = json.loads(result.stdout)
    assert result.returncode == 1  # the shipped AMI IDs are not in moto's image list
    assert {(r["image"], r["region"]) for r in rows} == {
        ("cpu-minimal", "us-east-1"),
        ("cpu-minimal", "us-west-2"),
        ("cpu-minimal", "eu-west-1"),
    }  # pytorch has no AWS pin until a matching AMI is baked (images/aws.lock.yaml)
    assert all(not r["ok"] and "not found" in r["detail"] for r in rows)


def test_images_verify_one_image(
    sqlite_deepops: Any, moto_url: str, pricing_url: tuple[str, list[dict[str, Any]]]
) -> None:
    configure(sqlite_deepops, moto_url, pricing_url[0])
    result = sqlite_deepops.run("images", "verify", "--cloud", "aws", "--image", "cpu-minimal", "--json")
    rows = json.loads(result.stdout)
    assert result.returncode == 1
    assert sorted((r["region"], r["pin"]) for r in rows) == [
        ("eu-west-1", "ami-05d3a0b1e8c47a9f2"),
        ("us-east-1", "ami-0f7c4a792e3fb63c8"),
        ("us-west-2", "ami-0d2e6a7ac9b1f3c55"),
    ]
