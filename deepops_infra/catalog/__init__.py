"""GPU offerings with prices: shipped with the package, refreshed per cloud from its pricing APIs.

The shipped table (`data/offerings.csv`) is seeded from the project's reference data (see the
file's header for its source). `deepops catalog refresh --cloud aws` writes
`$DEEPOPS_HOME/catalog/aws.csv`, which then replaces the shipped AWS rows; other clouds keep theirs.
"""

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from deepops_infra.accelerators import ACCELERATORS, model_allows

SHIPPED = Path(__file__).resolve().parent / "data" / "offerings.csv"
SOURCE = "deepops-infra shared/data/gpu_prices.csv (mid-2025 snapshot of the clouds' public catalog data)"
COLUMNS = (
    "cloud",
    "region",
    "instance_type",
    "accelerator",
    "accelerator_count",
    "vcpus",
    "memory_gib",
    "price_per_hour",
    "spot_price_per_hour",
)
# Names the price lists use for a model of one memory size only, mapped onto the models a request names.
ALIASES = {
    "A100": "A100-40GB",  # p4d, a2-highgpu, ND96asr_v4: 40 GB
    "H100": "H100-80GB",
    "H100-MEGA": "H100-80GB",
    "V100-32GB": "V100",
    "A10G": "A10G",
}


def canonical_accelerator(name: str) -> str:
    """The request model an offering's GPU is (`A100` in a price list is the 40 GB part)."""
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    if key not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r} in the catalog")
    return key


@dataclass(frozen=True)
class Offering:
    cloud: str
    region: str
    instance_type: str
    accelerator: str  # canonical model (accelerators.ACCELERATORS)
    accelerator_count: int
    vcpus: int
    memory_gib: Decimal
    price_per_hour: Decimal | None  # None: not sold on demand there
    spot_price_per_hour: Decimal | None  # None: no spot offer

    def matches(self, model: str | None, count: int) -> bool:
        """Exactly `count` GPUs of `model` (any model when None): never billed for GPUs not asked for."""
        if self.accelerator_count != count:
            return False
        return model is None or model_allows(model, self.accelerator)

    def price(self, spot: bool) -> Decimal | None:
        return self.spot_price_per_hour if spot else self.price_per_hour

    def row(self) -> list[str]:
        spot = "" if self.spot_price_per_hour is None else str(self.spot_price_per_hour)
        demand = "" if self.price_per_hour is None else str(self.price_per_hour)
        return [
            self.cloud,
            self.region,
            self.instance_type,
            self.accelerator,
            str(self.accelerator_count),
            str(self.vcpus),
            str(self.memory_gib),
            demand,
            spot,
        ]

    def to_json(self) -> dict[str, object]:
        return dict(zip(COLUMNS, self.row(), strict=True)) | {
            "accelerator_count": self.accelerator_count,
            "vcpus": self.vcpus,
            "price_per_hour": None if self.price_per_hour is None else str(self.price_per_hour),
            "spot_price_per_hour": None if self.spot_price_per_hour is None else str(self.spot_price_per_hour),
        }


def parse_rows(text: str, where: str) -> list[Offering]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{where}: expected columns {','.join(COLUMNS)}")
    offers = []
    for n, row in enumerate(reader, start=2):
        try:
            offers.append(
                Offering(
                    cloud=row["cloud"],
                    region=row["region"],
                    instance_type=row["instance_type"],
                    accelerator=canonical_accelerator(row["accelerator"]),
                    accelerator_count=int(row["accelerator_count"]),
                    vcpus=int(row["vcpus"]),
                    memory_gib=Decimal(row["memory_gib"]),
                    price_per_hour=Decimal(row["price_per_hour"]) if row["price_per_hour"] else None,
                    spot_price_per_hour=Decimal(row["spot_price_per_hour"]) if row["spot_price_per_hour"] else None,
                )
            )
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(f"{where} row {n}: {exc}") from None
    return offers


def write_rows(offers: Iterable[Offering], header: str) -> str:
    out = io.StringIO()
    for line in header.splitlines():
        out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for offer in sorted(offers, key=lambda o: (o.cloud, o.region, o.accelerator, o.accelerator_count, o.instance_type)):
        writer.writerow(offer.row())
    return out.getvalue()


def refreshed_path(home: Path, cloud: str) -> Path:
    return home / "catalog" / f"{cloud}.csv"


def load_catalog(home: Path | None = None) -> list[Offering]:
    """The shipped offerings, with each cloud's part replaced by a refreshed file when there is one."""
    offers = parse_rows(SHIPPED.read_text(), str(SHIPPED))
    if home is None:
        return offers
    for cloud in sorted({o.cloud for o in offers} | {"aws"}):
        path = refreshed_path(home, cloud)
        if path.exists():
            offers = [o for o in offers if o.cloud != cloud] + parse_rows(path.read_text(), str(path))
    return offers
