"""Files people edit by hand (issue 13, items 11 and 12): a key written twice, a non-finite or
wrongly typed value and bytes that are not UTF-8 are errors naming the file and line, never a
silent "the last one wins", a crash later or a NaN price in the ledger."""

from decimal import Decimal
from pathlib import Path

import pytest

from deepops_infra.catalog import COLUMNS, load_catalog, parse_rows, refreshed_path
from deepops_infra.config import Settings, parse_config
from deepops_infra.errors import UserError
from deepops_infra.images import load_images
from deepops_infra.policy_file import merge_policy_file
from deepops_infra.pool import load_pool, parse_host_entry
from deepops_infra.pricing import Price, onprem_price
from deepops_infra.yamlfile import load_yaml, load_yaml_documents
from tests.test_cli_bad_input import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
HOST = "  - name: gpu1\n    address: 10.0.0.1\n"
RATES = "    rates: {gpu_hour: 1, host_hour: 1}\n"


def error_of(call, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as info:
        call(*args)
    return str(info.value)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# --- duplicate keys ------------------------------------------------------------------------------


def test_a_second_max_ttl_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", "policy:\n  default:\n    max_ttl: 4h\n    max_ttl: 30d\n")
    assert error_of(load_yaml, path) == f"{path}:4: duplicate key 'max_ttl' (first at line 3); keep one"


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("defaults:\n  team: ml\ndefaults:\n  team: cv\n", 3, "defaults", 1),
        ("ledger_url: sqlite:///a\npool_file: p\nledger_url: sqlite:///b\n", 3, "ledger_url", 1),
        ("policy:\n  teams:\n    ml: {max_ttl: 4h, max_ttl: 9d}\n", 3, "max_ttl", 3),
        ("policy:\n  teams:\n    ml: {}\n    cv: {}\n    ml: {max_ttl: 9d}\n", 5, "ml", 3),
    ],
)
def test_duplicate_keys_in_config(tmp_path: Path, text: str, line: int, key: str, first: int) -> None:
    path = write(tmp_path, "config.yaml", text)
    assert error_of(load_yaml, path) == f"{path}:{line}: duplicate key {key!r} (first at line {first}); keep one"


def test_duplicate_keys_in_pool_policy_and_image_files(tmp_path: Path) -> None:
    pool = write(tmp_path, "pool.yaml", "hosts:\n" + HOST + RATES + "    address: h2\n")
    assert error_of(load_pool, pool).startswith(f"{pool}:5: duplicate key 'address' (first at line 3)")
    rates = write(
        tmp_path, "rates.yaml", "hosts:\n" + HOST + "    rates: {gpu_hour: 9, host_hour: 1, gpu_hour: 0.01}\n"
    )
    assert error_of(load_pool, rates).startswith(f"{rates}:4: duplicate key 'gpu_hour' (first at line 4)")

    policy = write(tmp_path, "policy.yaml", "teams:\n  ml:\n    max_ttl: 4h\n  ml:\n    max_ttl: 30d\n")
    message = error_of(merge_policy_file, parse_config(None, tmp_path / "config.yaml"), policy)
    assert message.startswith(f"{policy}:4: duplicate key 'ml' (first at line 2)")

    images = tmp_path / "images"
    images.mkdir()
    write(images, "x.yaml", "name: x\ngpu_required: false\ngpu_required: true\n")
    assert error_of(load_images, images).startswith(f"{images / 'x.yaml'}:3: duplicate key 'gpu_required'")


def test_duplicate_key_in_config_refuses_the_command_and_writes_nothing(sqlite_deepops) -> None:
    """Today the second max_ttl wins: a 30d request passes a 4h policy. Now the file is refused."""
    sqlite_deepops.write_config("policy:\n  default:\n    max_ttl: 4h\n    max_ttl: 30d\n")
    proc = sqlite_deepops.run("up", "--ttl", "20d", "--dry-run", "--json")
    assert_one_line_error(proc, "config.yaml:4: duplicate key 'max_ttl' (first at line 3)")
    assert sorted(p.name for p in sqlite_deepops.home.iterdir()) == ["config.yaml"]


def test_every_shipped_yaml_file_loads_without_duplicate_keys() -> None:
    """Image definitions, cloud locks, roles' task files, deployment files: all through the loader."""
    files = [
        p
        for folder in ("images", "roles", "deploy", "stacks")
        for p in sorted((REPO / folder).rglob("*"))
        if p.suffix in (".yml", ".yaml") and p.is_file()
    ]
    assert len(files) > 20
    for path in files:
        load_yaml_documents(path)


# --- non-finite numbers, prices ------------------------------------------------------------------


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", ".NaN", "1.0e+400"])
def test_non_finite_rates_are_refused_at_load(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "pool.yaml", "hosts:\n" + HOST + f"    rates: {{gpu_hour: 1, host_hour: {value}}}\n")
    assert error_of(load_pool, path) == f"{path}:4: {value!r} is not a finite number; write an ordinary number"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_rates_from_the_command_line_are_refused(tmp_path: Path, value: float) -> None:
    entry = {"name": "gpu1", "address": "h", "rates": {"gpu_hour": value, "host_hour": 1}}
    assert "rates.gpu_hour must be a finite positive number" in error_of(parse_host_entry, entry, tmp_path / "p.yaml")


def test_pool_add_with_a_nan_rate_writes_nothing(sqlite_deepops) -> None:
    proc = sqlite_deepops.run(
        "pool", "add", "gpu1", "--address", "h", "--gpu-rate", "nan", "--host-rate", "1", "--no-detect"
    )
    assert_one_line_error(proc, "rates.gpu_hour must be a finite positive number")
    assert not sqlite_deepops.pool_file.exists()


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-1")])
def test_a_nan_price_never_reaches_the_ledger(value: Decimal) -> None:
    with pytest.raises(UserError, match="not a finite positive price"):
        Price(per_hour=value)
    with pytest.raises(UserError, match=r"rates\.gpu_hour"):
        onprem_price(0.1, float(value), 1)
    assert Price(per_hour=Decimal("0")).per_hour == 0  # a zero total is a price (the parts are not)


@pytest.mark.parametrize(
    ("price", "spot", "column"),
    [("NaN", "", "price_per_hour"), ("1", "inf", "spot_price_per_hour"), ("0", "", "price_per_hour")],
)
def test_catalog_prices_must_be_finite_and_positive(tmp_path: Path, price: str, spot: str, column: str) -> None:
    text = "# refreshed\n" + ",".join(COLUMNS) + f"\naws,us-east-1,p5.48xlarge,H100,8,192,2048,{price},{spot}\n"
    with pytest.raises(ValueError, match=rf"^x row 3: {column}: '\w+' is not a finite positive price"):
        parse_rows(text, "x")
    path = refreshed_path(tmp_path, "aws")
    path.parent.mkdir()
    path.write_text(text)
    assert error_of(load_catalog, tmp_path).startswith(f"{path} row 3: {column}")


def test_gpus_with_a_bad_refreshed_catalog_is_one_line(sqlite_deepops) -> None:
    path = refreshed_path(sqlite_deepops.home, "aws")
    path.parent.mkdir(parents=True)
    path.write_bytes(",".join(COLUMNS).encode() + b"\naws,us-east-1,p5.48xlarge,H100,8,192,2048,NaN,\n")
    assert_one_line_error(sqlite_deepops.run("gpus"), f"{path} row 2: price_per_hour")
    path.write_bytes(",".join(COLUMNS).encode() + b"\naws,us-east-\xff1,p5.48xlarge,H100,8,192,2048,1,\n")
    assert_one_line_error(sqlite_deepops.run("gpus"), f"{path}:2: not UTF-8 text (byte 0xff)")


# --- wrong types, encodings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("defaults:\n  team: ml\nledger_url: 5\n", 3, "ledger_url must be a string"),
        ("pool_file: [a, b]\n", 1, "pool_file must be a string"),
        ("policy_file: {a: 1}\n", 1, "policy_file must be a string"),
        ("ledger_url: ''\n", 1, "ledger_url must be a string"),
        ("aws: 5\n", 1, "aws must be a mapping of settings"),
        ("reaper: [1, 2]\n", 1, "reaper must be a mapping of settings"),
    ],
)
def test_wrongly_typed_config_values_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "config.yaml", text)
    assert error_of(lambda: parse_config(load_yaml(path), path)).startswith(f"{path}:{line}: {message}")


def test_wrongly_typed_ledger_url_is_one_line_on_the_command_line(sqlite_deepops) -> None:
    """Today `ledger_url: 5` crashes `deepops ls` with a traceback (int has no startswith)."""
    sqlite_deepops.write_config("defaults:\n  team: ml\nledger_url: 5\n")
    assert_one_line_error(sqlite_deepops.run("ls"), "config.yaml:3: ledger_url must be a string")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("hosts:\n" + HOST + RATES + "    user: [root]\n", 5, "user must be a string"),
        ("hosts:\n" + HOST + RATES + "    python: 3\n", 5, "python must be a string"),
        (
            "hosts:\n" + HOST + RATES + "    gpus:\n      - {index: true, model: A100}\n",
            6,
            "each declared GPU needs `index`",
        ),
        (
            "hosts:\n" + HOST + RATES + "    gpus:\n      - {index: 0, model: A100, memory_mib: x}\n",
            6,
            "memory_mib of a declared GPU",
        ),
        ("hosts:\n" + HOST + RATES + "    labels: {a: [1]}\n", 5, "labels must be"),
    ],
)
def test_wrongly_typed_pool_values_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "pool.yaml", text)
    message_found = error_of(load_pool, path)
    assert message_found.startswith(f"{path}:{line}: ") and message in message_found


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('name: x\ngpu_required: "no"\n', 2, "gpu_required must be true or false"),
        ("name: x\nversions: [torch]\n", 2, "versions maps names to versions"),
        ("name: x\ndescription: {a: 1}\n", 2, "description must be a string"),
        ("name: x\nonprem:\n  lock: 5\n  sha256: abc\n", 3, "onprem.lock must be a path"),
        ("name: x\nonprem:\n  lock: l.txt\n  sha256: 12\n", 4, "onprem.sha256 must be the lock's sha256"),
    ],
)
def test_wrongly_typed_image_values_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    write(tmp_path, "x.yaml", text)
    assert error_of(load_images, tmp_path).startswith(f"{tmp_path / 'x.yaml'}:{line}: {message}")


@pytest.mark.parametrize(
    ("data", "line", "expected"),
    [
        (b"defaults:\n  team: \xff\xfe\n", 2, "not UTF-8 text (byte 0xff); save the file as UTF-8"),
        (b"# caf\xe9\nledger_url: x\n", 1, "not UTF-8 text (byte 0xe9); save the file as UTF-8"),
        (b"a: \x01\n", 1, "invalid YAML: character #x0001 is not allowed"),
        (b"? [a, b]\n: 1\n", 1, "a key must be a plain value, not a list or mapping"),
    ],
)
def test_unreadable_bytes_name_file_and_line(tmp_path: Path, data: bytes, line: int, expected: str) -> None:
    path = write(tmp_path, "config.yaml", data)
    assert error_of(load_yaml, path) == f"{path}:{line}: {expected}"


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, "config.yaml", b"\xef\xbb\xbfledger_url: x\n")) == {"ledger_url": "x"}


def test_non_utf8_config_is_one_line_on_the_command_line(sqlite_deepops) -> None:
    sqlite_deepops.home.mkdir(parents=True)
    (sqlite_deepops.home / "config.yaml").write_bytes(b"defaults:\n  team: \xe9quipe\n")
    assert_one_line_error(sqlite_deepops.run("ls"), "config.yaml:2: not UTF-8 text (byte 0xe9)")
    assert sorted(p.name for p in sqlite_deepops.home.iterdir()) == ["config.yaml"]


def test_settings_refuse_a_wrongly_typed_pool_file_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    monkeypatch.delenv("DEEPOPS_POOL", raising=False)
    write(tmp_path, "config.yaml", "pool_file: 5\n")
    with pytest.raises(UserError, match=r"config.yaml:1: pool_file must be a string"):
        Settings(home=tmp_path).pool_path  # noqa: B018
