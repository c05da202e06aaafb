"""`deepops catalog check`: the shipped catalog passes; bad prices and shapes are found; accepted
exceptions name their source; the exit status tells CI whether the check failed."""

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepops_infra.catalog import SHIPPED, Offering, read_catalog
from deepops_infra.catalog.check import ACCEPTED, Exception_, check, read_accepted
from deepops_infra.cli import app
from deepops_infra.errors import UserError

HEADER = (
    "cloud,region,instance_type,accelerator,accelerator_count,vcpus,memory_gib,price_per_hour,spot_price_per_hour\n"
)
BAD = HEADER + (
    "gcp,us-central1,a3-highgpu-1g,H100,1,26,234,5.38327,3.35377\n"
    "gcp,us-east4,a3-highgpu-1g,H100,1,26,234,10.97906,2.50556\n"
    "aws,us-east-1,g5.xlarge,A10G,1,4,16,1.006,1.2\n"
    "azure,eastus,Standard_NC4as_T4_v3,T4,,4,,0.526,0.0627\n"
)


def offer(region: str, demand: str, spot: str | None = None, count: int = 1) -> Offering:
    return Offering(
        "gcp", region, "a3-highgpu-1g", "H100-80GB", count, 26, Decimal(234), Decimal(demand), spot and Decimal(spot)
    )


def test_the_shipped_catalog_passes() -> None:
    assert [f for f in check(read_catalog(SHIPPED)) if not f.accepted] == []
    assert all(e.source for e in read_accepted(ACCEPTED))


def test_the_corrected_gcp_rows_no_longer_decide_placements() -> None:
    prices = {(o.region, o.instance_type): o.price_per_hour for o in read_catalog(SHIPPED) if o.cloud == "gcp"}
    assert prices[("us-central1", "a3-highgpu-1g")] == prices[("us-east4", "a3-highgpu-1g")] == Decimal("10.97906")
    assert prices[("europe-west4", "a2-highgpu-1g")] == prices[("us-central1", "a2-highgpu-1g")]


def test_region_spread_is_per_gpu_hour_and_configurable() -> None:
    offers = [offer("us-central1", "5.38"), offer("us-east4", "10.98")]
    (found,) = check(offers, Decimal("1.5"), [])
    assert (found.check, found.cloud, found.instance_type, found.region) == (
        "region-spread",
        "gcp",
        "a3-highgpu-1g",
        "",
    )
    assert "$5.38/GPU-h in us-central1 vs $10.98 in us-east4 (x2.04 > x1.5)" in found.detail
    assert check(offers, Decimal("2.1"), []) == []
    # Different GPU counts of one type are different shapes; price per GPU is what is compared.
    assert check([offer("us-central1", "10", count=1), offer("us-east4", "40", count=4)], Decimal("1.5"), []) == []


def test_spot_above_demand_and_missing_shape() -> None:
    found = check([offer("us-east4", "10", spot="12"), offer("us-east4", "10", count=0)], Decimal("1.5"), [])
    assert [(f.check, f.region) for f in found] == [("spot-above-demand", "us-east4"), ("missing-shape", "us-east4")]
    assert found[1].detail == "H100-80GB: no GPU count"


def test_an_accepted_exception_carries_its_source() -> None:
    rule = Exception_("region-spread", "gcp", "", "a3-highgpu-1g", 1, "GCP pricing page, 2025-06-01")
    (found,) = check([offer("us-central1", "5.38"), offer("us-east4", "10.98")], Decimal("1.5"), [rule])
    assert found.accepted == "GCP pricing page, 2025-06-01"


def test_cli_fails_on_a_bad_catalog_and_passes_the_shipped_one(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["catalog", "check"], env={"DEEPOPS_HOME": str(tmp_path / "home")})
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD)
    result = runner.invoke(app, ["catalog", "check", "--file", str(bad), "--json"])
    assert result.exit_code == 1
    assert '"check": "region-spread"' in result.stdout and '"check": "spot-above-demand"' in result.stdout
    assert '"detail": "T4: no GPU count, no memory"' in result.stdout
    accepted = tmp_path / "accepted.csv"
    accepted.write_text(
        "check,cloud,region,instance_type,accelerator_count,source\n"
        "region-spread,gcp,,a3-highgpu-1g,1,test\n"
        "spot-above-demand,aws,us-east-1,g5.xlarge,1,test\n"
        "missing-shape,azure,eastus,Standard_NC4as_T4_v3,0,test\n"
    )
    passed = runner.invoke(app, ["catalog", "check", "--file", str(bad), "--accepted", str(accepted)])
    assert passed.exit_code == 0, passed.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factor", "0.5"], "--factor '0.5': give a number of 1 or more"),
        (["--factor", "nan"], "--factor 'nan': give a number of 1 or more"),
        (["--file", "/nonexistent.csv"], "--file /nonexistent.csv: no such file"),
    ],
)
def test_bad_options_are_user_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["catalog", "check", *args])
    assert isinstance(result.exception, UserError) and message in str(result.exception)


def test_a_bad_option_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deepops_infra", "catalog", "check", "--factor", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == "deepops: error: --factor '0': give a number of 1 or more, e.g. --factor 1.5\n"
    assert proc.stdout == ""
