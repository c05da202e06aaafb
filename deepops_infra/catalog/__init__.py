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
from deepops_infra.errors import UserError
from deepops_infra.pricing import finite_price

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


def _price(text: str, column: str) -> Decimal | None:
    """An empty cell is "not sold"; anything else must be a finite positive price."""
    if not text:
        return None
    try:
        return finite_price(text, column)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def _row(row: dict[str, str]) -> Offering:
    if None in row or any(value is None for value in row.values()):
        raise ValueError(f"expected {len(COLUMNS)} columns")
    # An empty GPU count, vCPUs or memory loads as 0 (such an offer never matches a request) so that
    # `deepops catalog check` can name it rather than the load stopping at the first one.
    memory = Decimal(row["memory_gib"] or 0)
    if not memory.is_finite() or memory < 0:
        raise ValueError(f"memory_gib {row['memory_gib']!r} must be a finite number >= 0")
    return Offering(
        cloud=row["cloud"],
        region=row["region"],
        instance_type=row["instance_type"],
        accelerator=canonical_accelerator(row["accelerator"]),
        accelerator_count=int(row["accelerator_count"] or 0),
        vcpus=int(row["vcpus"] or 0),
        memory_gib=memory,
        price_per_hour=_price(row["price_per_hour"], "price_per_hour"),
        spot_price_per_hour=_price(row["spot_price_per_hour"], "spot_price_per_hour"),
    )


def parse_rows(text: str, where: str) -> list[Offering]:
    """The offerings of a catalog file; a bad row is a ValueError naming its line in the file."""
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line and not line.startswith("#")]
    reader = csv.DictReader([line for _, line in numbered])
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{where}: expected columns {','.join(COLUMNS)}")
    offers = []
    for row in reader:
        n = numbered[reader.line_num - 1][0]
        try:
            offers.append(_row(row))
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


def read_catalog(path: Path) -> list[Offering]:
    """One catalog file; unreadable, not UTF-8 or a bad row is a UserError naming the file and line."""
    from deepops_infra.yamlfile import read_text

    try:
        return parse_rows(read_text(path), str(path))
    except ValueError as exc:
        raise UserError(f"{exc}; fix the file or run `deepops catalog refresh` again") from None


def load_catalog(home: Path | None = None) -> list[Offering]:
    """The shipped offerings, with each cloud's part replaced by a refreshed file when there is one."""
    offers = read_catalog(SHIPPED)
    if home is None:
        return offers
    for cloud in sorted({o.cloud for o in offers} | {"aws"}):
        path = refreshed_path(home, cloud)
        if path.exists():
            offers = [o for o in offers if o.cloud != cloud] + read_catalog(path)
    return offers
