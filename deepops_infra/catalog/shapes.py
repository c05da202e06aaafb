"""What a refresh re-prices: the GPU machine shapes of a cloud (type -> GPUs, vCPUs, memory), taken
from the shipped catalog, whose rows come from the clouds' published machine specifications.
The pricing APIs give prices, not shapes; a type the shipped table lacks is not offered."""

from dataclasses import dataclass
from decimal import Decimal

from deepops_infra.catalog import SHIPPED, Offering, parse_rows


@dataclass(frozen=True)
class Shape:
    instance_type: str
    accelerator: str
    accelerator_count: int
    vcpus: int
    memory_gib: Decimal

    def offer(self, cloud: str, region: str, demand: Decimal | None, spot: Decimal | None) -> Offering:
        return Offering(
            cloud=cloud,
            region=region,
            instance_type=self.instance_type,
            accelerator=self.accelerator,
            accelerator_count=self.accelerator_count,
            vcpus=self.vcpus,
            memory_gib=self.memory_gib,
            price_per_hour=demand,
            spot_price_per_hour=spot,
        )


def shapes(cloud: str) -> dict[str, Shape]:
    return {
        o.instance_type: Shape(o.instance_type, o.accelerator, o.accelerator_count, o.vcpus, o.memory_gib)
        for o in parse_rows(SHIPPED.read_text(), str(SHIPPED))
        if o.cloud == cloud
    }


def shipped_regions(cloud: str) -> list[str]:
    return sorted({o.region for o in parse_rows(SHIPPED.read_text(), str(SHIPPED)) if o.cloud == cloud})
