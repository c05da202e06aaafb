"""Team mode end to end: the CLI with DEEPOPS_SERVER set and a member's (or admin's) token goes
through one real `deepops serve` process for every command, or refuses in one line with exit 2;
nothing is read from or written to the laptop's own state."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_server_fixtures import Served, seed_machine, start_server, stop_server

CONFIG = "budgets:\n  teams:\n    ml: 100\n    cv: 50\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("team")
    s = start_server(tmp, f"sqlite:///{tmp / 'srv-home' / 'ledger.db'}", config=CONFIG)
    ledger = s.ledger()
    for mid, owner, team in (("m-alice001", "alice", "ml"), ("m-bob00001", "bob", "ml"), ("m-carl0001", "carl", "cv")):
        seed_machine(ledger, mid, owner, team)
    from deepops_infra.ledger.schema import Machine

    with ledger.write() as session:  # on the server's own pool host, so that a release really runs
        session.get(Machine, "m-alice001").host = "localhost"
    ledger.close()
    yield s
    stop_server(s)


def laptop(s: Served, tmp_path: Path, user: str) -> dict[str, str]:
    """A team member's computer: its own empty DEEPOPS_HOME, the server's URL and their token."""
    env = {k: v for k, v in s.env.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(tmp_path / user), DEEPOPS_SERVER=s.url, DEEPOPS_TOKEN=s.tokens[user])
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepops_infra", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def local_state(home: Path) -> list[Path]:
    """What local mode would have read or made in a DEEPOPS_HOME (a session's own ssh key is fine)."""
    return [p for p in (home / "ledger.db", home / "pool.yaml", home / "config.yaml") if p.exists()]


def refused(proc: subprocess.CompletedProcess, *words: str) -> bool:
    """Exit 2 with one line on stderr that says why."""
    return proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and all(w in proc.stderr for w in words)


def test_a_member_works_through_the_server(server: Served, tmp_path: Path) -> None:
    alice = laptop(server, tmp_path, "alice")
    assert [m["id"] for m in json.loads(cli(alice, "ls", "--json").stdout)] == ["m-alice001"]
    table = cli(alice, "ls").stdout
    assert "m-alice001" in table and "m-bob00001" not in table
    shown = cli(alice, "show", "m-alice001")
    assert shown.returncode == 0 and "owner/team/project" in shown.stdout and "alice / ml" in shown.stdout
    assert refused(cli(alice, "show", "m-bob00001"), "no machine 'm-bob00001' visible to you")
    extended = cli(alice, "extend", "m-alice001", "--ttl", "1h")
    assert extended.returncode == 0 and extended.stderr.startswith("m-alice001 now ends at ")
    plan = cli(alice, "up", "--gpus", "0", "--dry-run")
    assert plan.returncode == 0 and plan.stderr.startswith("would lease 0 on localhost with cpu-minimal")
    assert refused(cli(alice, "up", "--gpus", "0", "--owner", "bob", "--dry-run"), "403", "themselves only")
    before = cli(laptop(server, tmp_path, "ivan"), "ls", "--all", "--json").stdout
    ran = cli(alice, "run", "--gpus", "0", "--", "true")
    from deepops_infra.cli.machines import _brokered_runner

    if _brokered_runner() is None:  # no brokered sessions: refused before anything is requested
        assert refused(ran, "DEEPOPS_SERVER"), ran.stderr
        assert cli(laptop(server, tmp_path, "ivan"), "ls", "--all", "--json").stdout == before
    else:  # the server's policy and machine, the brokered session, and the release through the server
        assert "the server is provisioning it" in ran.stderr and " terminated after " in ran.stderr, ran.stderr
    assert refused(cli(alice, "down", "m-bob00001", "--yes"), "visible to you")
    down = cli(alice, "down", "m-alice001", "--yes")
    assert down.returncode == 0 and "m-alice001 terminated after" in down.stderr, down.stderr + server.log()
    assert refused(cli(alice, "pool", "ls"), "server refused (403)")
    assert refused(cli(alice, "cost", "budgets"), "server refused (403)")
    assert refused(cli(alice, "reap", "--once"), "does not work with DEEPOPS_SERVER set")
    offers = cli(alice, "gpus", "--cloud", "aws", "--accelerator", "A100", "--json")
    assert offers.stdout == cli(server.env, "gpus", "--cloud", "aws", "--accelerator", "A100", "--json").stdout
    assert offers.returncode == 0 and json.loads(offers.stdout), offers.stderr
    assert not local_state(tmp_path / "alice")  # the laptop's own ledger and pool were never used


def test_admins_pool_and_budgets_through_the_server(server: Served, tmp_path: Path) -> None:
    ivan = laptop(server, tmp_path, "ivan")
    assert [h["name"] for h in json.loads(cli(ivan, "pool", "ls", "--json").stdout)] == ["localhost"]
    add = ["pool", "add", "lab-z", "--address", "192.0.2.9", "--gpu-rate", "1", "--host-rate", "0.1", "--no-detect"]
    added = cli(ivan, *add)
    assert added.returncode == 0 and "added lab-z to the team server's pool" in added.stderr, added.stderr
    assert "lab-z" in (server.home / "pool.yaml").read_text()
    assert refused(cli(ivan, *add), "already in the pool")
    assert "lab-z" in cli(ivan, "pool", "ls").stdout
    assert cli(ivan, "pool", "rm", "lab-z").returncode == 0
    assert "lab-z" not in (server.home / "pool.yaml").read_text()
    budgets = json.loads(cli(laptop(server, tmp_path, "fiona"), "cost", "budgets", "--json").stdout)
    assert {b["name"] for b in budgets["budgets"]} == {"ml", "cv"}
    mine = json.loads(cli(laptop(server, tmp_path, "tina"), "cost", "budgets", "--json").stdout)
    assert [b["name"] for b in mine["budgets"]] == ["ml"]
    table = cli(laptop(server, tmp_path, "fiona"), "cost", "budgets")
    assert table.returncode == 0 and f"Budgets {budgets['month']}" in table.stdout
    assert not any(local_state(tmp_path / user) for user in ("ivan", "fiona", "tina"))
