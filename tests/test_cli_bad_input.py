"""Bad input: one line on stderr saying what is wrong and what is allowed, exit 2, nothing written."""

import pytest
from sqlalchemy import func, select

from deepops_infra.ledger.schema import Event, GpuLease, Machine
from tests.conftest import declared_pool

UP = ("up", "--yes", "--json")


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("deepops: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--gpus", "FOO:1"), ("--gpus", "unknown GPU model 'FOO'", "A100")),
        (("--gpus", "A100:x"), ("--gpus", "count 'x'")),
        (("--gpus", "A100:0"), ("--gpus", "use --gpus 0 for CPU only")),
        (("--gpus", "A100:2:3"), ("--gpus", "malformed")),
        (("--gpus", "99"), ("--gpus", "at most 16")),
        (("--ttl", "0m"), ("--ttl", "longer than zero")),
        (("--ttl", "-1h"), ("--ttl", "not a duration")),
        (("--ttl", "soon"), ("--ttl", "not a duration", "8h")),
        (("--idle-timeout", "10"), ("--idle-timeout", "unit")),
        (("--image", "nope"), ("unknown image 'nope'", "cpu-minimal", "pytorch")),
        (("--host", "nowhere"), ("unknown host 'nowhere'", "localhost")),
        (("--cloud", "mars"), ("--cloud", "unknown cloud 'mars'", "onprem")),
        (("--spot",), ("--spot", "on-prem")),
        (("--disk", "0"), ("--disk", "1 to 65536")),
        (("--team", "Bad Team"), ("--team", "lower-case")),
        (("--name", "UPPER"), ("--name",)),
        (("--ttl", "30d"), ("policy", "rule max_ttl", "7d")),
        (("--idle-timeout", "3d"), ("policy", "rule max_idle_timeout")),
        (("--bogus",), ("No such option", "--bogus")),
    ],
)
def test_bad_request_changes_nothing(sqlite_deepops, args, fragments):
    proc = sqlite_deepops.run(*UP, *args)
    assert_one_line_error(proc, *fragments)
    assert not sqlite_deepops.home.exists(), "nothing may be written for a bad request"


def test_more_gpus_than_any_host_offers(deepops):
    deepops.write_pool(declared_pool(2))
    assert_one_line_error(deepops.run(*UP, "--gpus", "A100:4"), "no pool host offers 4 x A100", "localhost has 2")
    assert_one_line_error(deepops.run(*UP, "--gpus", "H100:1"), "no pool host offers 1 x H100", "localhost has 0")
    with deepops.ledger().read() as session:
        for table in (Machine, Event, GpuLease):
            assert session.scalar(select(func.count()).select_from(table)) == 0
    assert not (deepops.home / "workspaces").exists()


@pytest.mark.parametrize(
    ("pool", "line", "fragment"),
    [
        ("hosts:\n  - name: gpu1\n    connection: ssh\n    rates: {gpu_hour: 1, host_hour: 1}\n", 2, "needs `address`"),
        ("hosts:\n  - name: gpu1\n    address: 10.0.0.1\n", 2, "rates"),
        ("hosts:\n  - name: gpu1\n    address: h\n    rates: {gpu_hour: 0, host_hour: 1}\n", 4, "never priced at zero"),
        ("hosts:\n  - name: a\n    address: h\n    port: 99999\n", 4, "port"),
        ("hosts:\n  - name: a\n    adress: h\n", 3, "unknown host setting 'adress'"),
        ("hosts:\n  - name: a\n    address: [h\n", 4, "invalid YAML"),
    ],
)
def test_malformed_pool_file_names_the_line(sqlite_deepops, pool, line, fragment):
    sqlite_deepops.write_pool(pool)
    proc = sqlite_deepops.run(*UP)
    assert_one_line_error(proc, f"pool.yaml:{line}:", fragment)
    assert not (sqlite_deepops.home / "ledger.db").exists()


def test_policy_refuses_with_the_rule_and_cli_cannot_lift_it(sqlite_deepops):
    sqlite_deepops.write_config("""
policy:
  default:
    targets: [onprem]
    max_ttl: 4h
  teams:
    vision:
      gpu_models: [A100]
      max_gpus_running: 2
""")
    assert_one_line_error(sqlite_deepops.run(*UP, "--ttl", "5h"), "team default, rule max_ttl", "4h")
    assert_one_line_error(
        sqlite_deepops.run(*UP, "--team", "vision", "--gpus", "H100:1"),
        "team vision, rule gpu_models",
        "H100",
        "allowed: A100",
    )
    assert_one_line_error(
        sqlite_deepops.run(*UP, "--team", "vision", "--gpus", "A100:3"), "rule max_gpus_running", "at most 2"
    )
    assert_one_line_error(sqlite_deepops.run(*UP, "--cloud", "aws"), "rule targets", "allowed: onprem")
    assert not (sqlite_deepops.home / "ledger.db").exists()


def test_clouds_are_placed_by_gpu_offer(sqlite_deepops):
    for cloud in ("gcp", "azure"):
        assert_one_line_error(sqlite_deepops.run(*UP, "--cloud", cloud), "--gpus 0", "--cloud onprem")


def test_machine_commands_on_unknown_ids(sqlite_deepops):
    for args in (
        ("show", "m-nope"),
        ("ssh", "m-nope", "--", "true"),
        ("down", "m-nope", "--yes"),
        ("extend", "m-nope", "--ttl", "1h"),
    ):
        assert_one_line_error(sqlite_deepops.run(*args), "no machine 'm-nope'")
    assert_one_line_error(sqlite_deepops.run("extend", "m-nope", "--ttl", "0h"), "--ttl")
