"""Placement over the shipped catalog, with every expected offer and price checked by hand
against deepops_infra/catalog/data/offerings.csv."""

from datetime import timedelta
from decimal import Decimal

import pytest

from deepops_infra.catalog import Offering, load_catalog
from deepops_infra.errors import UserError
from deepops_infra.placement import place
from deepops_infra.request import GpuSpec, MachineRequest

PINS = {
    ("us-east-1", "pytorch"): "ami-0aaaaaaaaaaaaaaa1",
    ("us-west-2", "pytorch"): "ami-0aaaaaaaaaaaaaaa2",
}


def aws_pin(region: str, image: str) -> str | None:
    return PINS.get((region, image))


def req(gpus: str, spot: bool = False, region: str | None = None, image: str = "pytorch") -> MachineRequest:
    return MachineRequest(
        gpus=GpuSpec.parse(gpus),
        cloud="aws",
        region=region,
        host=None,
        image=image,
        spot=spot,
        ttl=timedelta(hours=8),
        idle_timeout=timedelta(hours=1),
        disk_gb=None,
        owner="ada",
        team="vision",
        project="detr",
        name=None,
    )


CATALOG = load_catalog()


def picks(request: MachineRequest, **kw: object) -> list[tuple[str, str, Decimal]]:
    placed = place(request, CATALOG, {"aws": aws_pin}, **kw)  # type: ignore[arg-type]
    return [(c.offer.region, c.offer.instance_type, c.price_per_hour) for c in placed.candidates]


def test_h100_8_on_demand_is_p5_48xlarge_tie_broken_by_region() -> None:
    # p5.48xlarge is 55.04/h in us-east-1 and us-west-2 (and absent from eu-west-1).
    assert picks(req("H100:8")) == [
        ("us-east-1", "p5.48xlarge", Decimal("55.04")),
        ("us-west-2", "p5.48xlarge", Decimal("55.04")),
    ]


def test_h100_8_spot_takes_the_cheaper_spot_region() -> None:
    # spot: us-west-2 12.6935 < us-east-1 17.6289
    assert picks(req("H100:8", spot=True)) == [
        ("us-west-2", "p5.48xlarge", Decimal("12.6935")),
        ("us-east-1", "p5.48xlarge", Decimal("17.6289")),
    ]


def test_t4_1_picks_the_smallest_instance_and_skips_the_unpinned_region() -> None:
    placed = place(req("T4:1"), CATALOG, {"aws": aws_pin})
    first = [(c.offer.region, c.offer.instance_type, c.price_per_hour) for c in placed.candidates[:4]]
    assert first == [
        ("us-east-1", "g4dn.xlarge", Decimal("0.526")),
        ("us-west-2", "g4dn.xlarge", Decimal("0.526")),
        ("us-east-1", "g4dn.2xlarge", Decimal("0.752")),
        ("us-west-2", "g4dn.2xlarge", Decimal("0.752")),
    ]
    assert "aws eu-west-1: image pytorch has no pin there" in placed.skipped
    assert all(c.offer.accelerator_count == 1 for c in placed.candidates)  # g4dn.12xlarge (4) and metal (8) are out


def test_a100_matches_both_sizes_and_a100_80gb_only_the_large_one() -> None:
    assert picks(req("A100:8")) == [
        ("us-east-1", "p4d.24xlarge", Decimal("21.95764")),
        ("us-west-2", "p4d.24xlarge", Decimal("21.95764")),
        ("us-east-1", "p4de.24xlarge", Decimal("27.44705")),
        ("us-west-2", "p4de.24xlarge", Decimal("27.44705")),
    ]
    assert [p[1] for p in picks(req("A100-80GB:8"))] == ["p4de.24xlarge", "p4de.24xlarge"]


def test_region_constraint_and_enabled_regions() -> None:
    in_west = picks(req("L4:1", region="us-west-2"))
    assert in_west[0] == ("us-west-2", "g6.xlarge", Decimal("0.8048"))
    assert {r for r, _, _ in in_west} == {"us-west-2"}
    enabled = picks(req("L4:1"), regions={"aws": ["us-west-2"]})
    assert enabled == in_west


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(UserError, match=r"no aws offer has MI300X; offered models: .*H100-80GB"):
        place(req("MI300X:1"), CATALOG, {"aws": aws_pin})
    with pytest.raises(UserError, match=r"exactly 3 x H100; H100 machines come with 1, 8 GPUs"):
        place(req("H100:3"), CATALOG, {"aws": aws_pin})
    with pytest.raises(
        UserError, match=r"--region eu-west-1: no offer of 8 x H100 there; regions that have it: us-east-1, us-west-2"
    ):
        place(req("H100:8", region="eu-west-1"), CATALOG, {"aws": aws_pin})
    with pytest.raises(UserError, match=r"aws eu-west-1: image pytorch has no pin there"):
        place(req("T4:1", region="eu-west-1"), CATALOG, {"aws": aws_pin})
    # p5.4xlarge has no spot price in the catalog
    with pytest.raises(UserError, match=r"p5.4xlarge: no spot price"):
        place(req("H100:1", spot=True), CATALOG, {"aws": aws_pin})


def test_only_the_allowed_clouds_are_placed_on() -> None:
    extra = Offering("gcp", "us-central1", "a3-highgpu-8g", "H100-80GB", 8, 208, Decimal(1872), Decimal("1.00"), None)
    assert picks(req("H100:8"))[0][1] == "p5.48xlarge"
    placed = place(req("H100:8"), [*CATALOG, extra], {"aws": aws_pin, "gcp": lambda r, i: "projects/x/images/y"})
    assert placed.candidates[0].offer.instance_type == "a3-highgpu-8g"


def test_disk_is_priced_into_the_plan() -> None:
    from deepops_infra.providers.aws.provider import offer_price

    placed = place(req("H100:8"), CATALOG, {"aws": aws_pin})
    price = offer_price(placed.candidates[0], False, 100, Decimal("0.08"))
    # 100 GB x 0.08 / 730 h = 0.01095890.. -> 0.010959; 55.04 + 0.010959
    assert price.per_hour == Decimal("55.050959")
    assert price.parts["disk_hour"] == "0.010959"
