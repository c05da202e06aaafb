"""The CLI as a client of the team server: with DEEPOPS_SERVER the same commands print what they
print locally; `deepops login` keeps the token 0600; `deepops tokens` bootstraps and revokes."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_server_fixtures import Served, seed_machine, served

__all__ = ["served"]


def cli(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepops_infra", *args],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def remote_env(s: Served, tmp_path: Path, token: str | None) -> dict[str, str]:
    """A data scientist's laptop: its own DEEPOPS_HOME, no ledger, only the server and a token."""
    env = {k: v for k, v in s.env.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(tmp_path / "laptop"), DEEPOPS_SERVER=s.url)
    if token:
        env["DEEPOPS_TOKEN"] = token
    return env


def _seed(s: Served) -> None:
    ledger = s.ledger()
    seed_machine(ledger, "m-alice001", "alice", "ml")
    seed_machine(ledger, "m-carl0001", "carl", "cv", price="3.00")
    ledger.close()


def _stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "cost_usd"} for r in rows]


def test_same_output_as_local(served: Served, tmp_path: Path) -> None:
    _seed(served)
    local, remote = served.env, remote_env(served, tmp_path, served.tokens["ivan"])
    for args in (["ls", "--json"], ["ls", "--all", "--json"], ["show", "m-alice001", "--json"]):
        here, there = cli(local, *args), cli(remote, *args)
        assert here.returncode == there.returncode == 0, there.stderr
        a, b = json.loads(here.stdout), json.loads(there.stdout)
        if isinstance(a, list):
            assert _stable(a) == _stable(b)
        else:
            b.pop("price_per_hour_stored")
            assert _stable([a]) == _stable([b])
    here, there = cli(local, "ls"), cli(remote, "ls")
    strip = lambda out: [line.rsplit("$", 1)[0] for line in out.splitlines()]  # noqa: E731 (cost ticks on)
    assert strip(here.stdout) == strip(there.stdout) and "m-carl0001" in there.stdout
    here, there = cli(local, "show", "m-alice001"), cli(remote, "show", "m-alice001")
    drop = lambda out: [line for line in out.splitlines() if "cost so far" not in line]  # noqa: E731
    assert drop(here.stdout) == drop(there.stdout)
    here, there = (
        cli(local, "cost", "--by", "team", "--format", "csv"),
        cli(remote, "cost", "--by", "team", "--format", "csv"),
    )
    column = lambda out: [line.split(",")[0] for line in out.splitlines()]  # noqa: E731
    assert column(here.stdout) == column(there.stdout) == ["team", "cv", "ml"]
    there = cli(remote, "extend", "m-alice001", "--ttl", "1h")
    assert there.returncode == 0 and there.stderr.startswith("m-alice001 now ends at ")


def test_member_sees_only_their_own(served: Served, tmp_path: Path) -> None:
    _seed(served)
    alice = remote_env(served, tmp_path, served.tokens["alice"])
    assert [m["id"] for m in json.loads(cli(alice, "ls", "--json").stdout)] == ["m-alice001"]
    proc = cli(alice, "show", "m-carl0001")
    assert proc.returncode == 2 and proc.stderr == "deepops: error: no machine 'm-carl0001' visible to you\n"
    proc = cli(alice, "down", "m-carl0001", "--yes")
    assert proc.returncode == 2 and "visible" in proc.stderr
    proc = cli(alice, "cost")
    assert proc.returncode == 2 and proc.stderr.startswith("deepops: error: server refused (403): role member")
    proc = cli(alice, "up", "--gpus", "0", "--like", "m-alice001", "--yes")
    # --like goes to the server, which copies the earlier machine and checks its image pin
    assert proc.returncode == 2 and "m-alice001 ran sha256:test" in proc.stderr, proc.stderr
    proc = cli(alice, "up", "--gpus", "0", "--like", "m-carl0001", "--dry-run")
    assert proc.returncode == 2 and "no machine 'm-carl0001' visible to you" in proc.stderr, proc.stderr
    proc = cli(alice, "up", "--gpus", "0", "--dry-run")
    assert proc.returncode == 0 and proc.stderr.startswith("would lease 0 on localhost with cpu-minimal")


def test_login_keeps_the_token_0600_and_tokens_revoke(served: Served, tmp_path: Path) -> None:
    env = remote_env(served, tmp_path, None)
    proc = cli(env, "ls")
    assert proc.returncode == 2 and "deepops login" in proc.stderr
    proc = cli(env, "login", "--token-stdin", stdin="dpo_not-a-real-token\n")
    assert proc.returncode == 2 and "401" in proc.stderr
    assert not (tmp_path / "laptop" / "credentials.json").exists()
    # IT makes a token on the server's machine (local ledger), the data scientist logs in with it
    made = cli(served.env, "tokens", "create", "--user", "dana", "--team", "ml", "--role", "member", "--json")
    token = json.loads(made.stdout)["token"]
    proc = cli(env, "login", "--token-stdin", stdin=token + "\n")
    assert proc.returncode == 0 and "as dana (member, team ml)" in proc.stderr
    creds = tmp_path / "laptop" / "credentials.json"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600 and token not in proc.stderr + proc.stdout
    assert cli(env, "ls", "--json").stdout.strip() == "[]"
    listed = json.loads(cli(env, "tokens", "ls", "--json").stdout)
    assert [t["user"] for t in listed] == ["dana"] and "token" not in listed[0]
    assert cli(env, "tokens", "revoke", listed[0]["id"]).returncode == 0
    proc = cli(env, "ls")
    assert proc.returncode == 2 and "unknown, expired or revoked" in proc.stderr
    # a member cannot mint tokens for others
    alice = remote_env(served, tmp_path, served.tokens["alice"])
    proc = cli(alice, "tokens", "create", "--user", "eve", "--role", "it-admin", "--team", "it")
    assert proc.returncode == 2 and "403" in proc.stderr


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(tmp_path), DEEPOPS_SERVER="http://127.0.0.1:9", DEEPOPS_TOKEN="dpo_x")
    proc = cli(env, "ls")
    assert proc.returncode == 1 and proc.stderr.startswith("deepops: error: cannot reach the server at")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.ansible
def test_up_and_down_through_the_server(served: Served, tmp_path: Path) -> None:
    """A real lease on the local pool, requested and released through the server."""
    env = remote_env(served, tmp_path, served.tokens["alice"])
    proc = cli(env, "up", "--gpus", "0", "--ttl", "30m", "--json")
    assert proc.returncode == 0, proc.stderr + served.log()
    machine = json.loads(proc.stdout)
    assert machine["status"] == "ready" and machine["owner"] == "alice" and machine["team"] == "ml"
    proc = cli(env, "down", machine["id"], "--yes")
    assert proc.returncode == 0 and f"{machine['id']} terminated after" in proc.stderr
    with served.client("ivan") as c:
        audit = [(a["actor"], a["action"], a["outcome"]) for a in c.get("/audit").json()]
    assert ("alice", "request_machine", "ok") in audit and ("alice", "release_machine", "ok") in audit
