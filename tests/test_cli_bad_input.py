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
        # overflowing and non-ASCII durations (issue 13, items 10 and 13)
        (("--ttl", "99999999999999999999d"), ("--ttl", "too long", "at most 3650d")),
        (("--idle-timeout", "9999999999999w"), ("--idle-timeout", "too long")),
        (("--ttl", "9" * 5000 + "s"), ("--ttl", "too long")),
        (("--ttl", "\uff15h"), ("--ttl", "not a duration")),  # full-width 5
        (("--ttl", "\u0661h"), ("--ttl", "not a duration")),  # Arabic-Indic 1
        # an empty value is a mistake, never "not given" (item 13)
        (("--ttl", ""), ("--ttl", "empty")),
        (("--ttl=",), ("--ttl", "empty")),
        (("--team", ""), ("--team", "empty")),
        (("--name", ""), ("--name", "empty")),
        (("--idle-timeout", ""), ("--idle-timeout", "empty")),
        (("--image", ""), ("--image", "empty")),
        (("--cloud", " "), ("--cloud", "empty")),
        (("--disk", ""), ("--disk", "empty")),
        # a dry run is refused as the real request would be (item 14)
        (("--ttl", "30d", "--dry-run"), ("policy", "rule max_ttl")),
        (("--ttl", "", "--dry-run"), ("--ttl", "empty")),
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
    assert_one_line_error(sqlite_deepops.run("extend", "m-nope", "--ttl", "99999999999999999999d"), "--ttl", "too long")
    assert_one_line_error(sqlite_deepops.run("extend", "m-nope", "--ttl", ""), "--ttl", "empty")
    assert not sqlite_deepops.home.exists(), "a refused command creates nothing, not even an empty ledger"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("ls",), 0),
        (("ls", "--all", "--json"), 0),
        (("show", "m-nope"), 2),
        (("show", "m-nope", "--json"), 2),
        (("ssh", "m-nope", "--", "true"), 2),
        (("extend", "m-nope", "--ttl", "1h"), 2),
        (("down", "m-nope", "--yes"), 2),
        (("validate", "m-nope"), 2),
        (("cost",), 0),
        (("cost", "--format", "json"), 0),
        (("cost", "budgets"), 0),
        (("pool", "ls"), 0),
        (("policy", "ls"), 0),
        (("tokens", "ls"), 0),
        (("up", "--dry-run"), 0),
        (("up", "--dry-run", "--json"), 0),
        (("up", "--gpus", "0", "--ttl", "1h", "--dry-run"), 0),
    ],
)
def test_read_only_and_dry_run_create_nothing(sqlite_deepops, args, code):
    """Issue 13 item 14: reading an empty DEEPOPS_HOME leaves it as it was (no ledger.db, no folder)."""
    proc = sqlite_deepops.run(*args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sqlite_deepops.home.exists(), sorted(p.name for p in sqlite_deepops.home.rglob("*"))


def test_read_only_commands_leave_an_existing_home_as_it_was(sqlite_deepops):
    sqlite_deepops.write_config("defaults:\n  team: ml\n")
    for args in (("ls",), ("show", "m-nope"), ("cost",), ("up", "--dry-run")):
        sqlite_deepops.run(*args)
    assert sorted(p.name for p in sqlite_deepops.home.iterdir()) == ["config.yaml"]


def test_disk_beyond_the_hosts_free_space_is_refused_at_intake(sqlite_deepops):
    """Issue 13 item 13: `--disk` is compared with the free space of localhost's workspace root
    before anything is written (the play's own check would come after the machine's row)."""
    import shutil

    sqlite_deepops.write_pool(
        "hosts:\n  - name: localhost\n    connection: local\n    rates: {gpu_hour: 2, host_hour: 0.1}\n"
    )
    free_gb = shutil.disk_usage(sqlite_deepops.home).free / 1024**3
    asked = int(free_gb) + 100
    if asked > 65536:
        pytest.skip(f"{free_gb:.0f} GB free here: more than --disk can ask for")
    for extra in ((), ("--host", "localhost"), ("--dry-run",)):
        proc = sqlite_deepops.run(*UP, "--disk", str(asked), *extra)
        assert_one_line_error(proc, "--disk", f"{asked} GB", "localhost has", "GB free under")
    assert sorted(p.name for p in sqlite_deepops.home.iterdir()) == ["pool.yaml"]


def test_dry_run_is_refused_over_the_teams_gpus_and_budget(deepops):
    """Issue 13 item 14: --dry-run runs the same ledger checks as `up` (running GPUs, budget)."""
    from tests.test_budgets import _running_now
    from tests.test_costs import add_machine

    deepops.write_pool(declared_pool(4))
    deepops.write_config(
        "policy:\n  teams:\n    vision: {max_gpus_running: 2}\n"
        "budgets:\n  refuse_over_budget: true\n  teams:\n    nlp: 5\n"
    )
    ledger = deepops.ledger()
    with ledger.write() as session:
        add_machine(session, "m-vision01", team="vision", price="1", gpus=2, status="ready", intervals=[])
    _running_now(ledger, "nlp", "1000", 1)
    gpus = ("--gpus", "A100-80GB:1", "--dry-run")
    assert_one_line_error(deepops.run(*UP, *gpus, "--team", "vision"), "rule max_gpus_running", "the team runs 2 GPUs")
    assert_one_line_error(deepops.run(*UP, *gpus, "--team", "nlp"), "rule budgets.teams.nlp", "budget for")
    assert deepops.run(*UP, *gpus, "--team", "other").returncode == 0  # the same dry run, for a team within both
    with ledger.read() as session:
        assert session.scalar(select(func.count()).select_from(Machine)) == 2  # only the seeded ones
