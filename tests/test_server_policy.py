"""Policy administration through a real `deepops serve` process (SQLite and PostgreSQL): an
it-admin sets and drops team policies in policy.yaml, every other role is refused and nothing
changes, bad bodies are problem details that write nothing, config.yaml's teams are refused, and a
new policy takes effect at once for `POST /machines` and `GET /policy`. The CLI as its client too."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import Deepops
from tests.test_server_fixtures import Served, start_server, stop_server

PROBLEM = "application/problem+json"
CONFIG = """\
policy:
  teams:
    cv:
      max_gpus_running: 4
server:
  rate_per_second: 1000
  burst: 1000
"""
CPU_ONPREM = {"gpus": "0", "ttl": "30m", "cloud": "onprem"}


@pytest.fixture
def server(tmp_path: Path, ledger_url: str) -> Iterator[Served]:
    s = start_server(tmp_path, ledger_url, config=CONFIG)
    yield s
    stop_server(s)


def policy_file(s: Served) -> bytes | None:
    path = s.home / "policy.yaml"
    return path.read_bytes() if path.exists() else None


def machine_count(s: Served) -> int:
    with s.db().read() as session:
        return session.execute(text("SELECT count(*) FROM machines")).scalar()


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["status"] == status
    return r.json()["detail"]


def audited(ivan: httpx.Client, expected: set[tuple[str, str, str]]) -> None:
    """The audit line is written once the answer is sent: wait a little for it."""
    deadline = time.monotonic() + 10
    while True:
        entries = {(a["action"], a["target"], a["outcome"]) for a in ivan.get("/audit").json()}
        if expected <= entries or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert expected <= entries, entries


def test_it_admin_sets_and_drops_a_team_policy_that_takes_effect(server: Served) -> None:
    s = server
    with s.client("alice") as alice, s.client("ivan") as ivan:
        assert alice.post("/machines", json=CPU_ONPREM | {"dry_run": True}).status_code == 200

        r = ivan.put("/policy/teams/ml", json={"targets": ["aws"], "max_ttl": "4h"})
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "policy.yaml" and r.json()["rules"] == {"targets": ["aws"], "max_ttl": "4h"}
        assert b"ml:" in (policy_file(s) or b"")
        assert (s.home / "config.yaml").read_text() == CONFIG

        mine = alice.get("/policy").json()["policies"]["ml"]
        assert mine["targets"] == ["aws"] and mine["max_ttl_seconds"] == 4 * 3600
        detail = problem(alice.post("/machines", json=CPU_ONPREM), 403)
        assert detail == "policy (team ml, rule targets): onprem is not allowed; allowed: aws"
        assert machine_count(s) == 0

        assert ivan.put("/policy/teams/ml", json={"max_gpus_running": 0}).status_code == 200  # replaces the entry
        assert alice.post("/machines", json=CPU_ONPREM | {"dry_run": True}).status_code == 200
        detail = problem(alice.post("/machines", json=CPU_ONPREM | {"gpus": "A100:1"}), 403)
        assert detail.startswith("policy (team ml, rule max_gpus_running): 1 GPUs asked, the team may run at most 0")
        assert machine_count(s) == 0

        listed = ivan.get("/policy/teams").json()
        assert [(t["team"], t["source"], t["line"]) for t in listed["teams"]] == [
            ("cv", "config.yaml", 3),
            ("ml", "policy.yaml", 4),
        ]
        assert listed["teams"][1]["policy"]["max_gpus_running"] == 0

        r = ivan.delete("/policy/teams/ml")
        assert r.status_code == 200 and r.json()["policy"]["max_gpus_running"] == 8
        assert alice.get("/policy").json()["policies"]["ml"]["max_gpus_running"] == 8
        assert "no policy in" in problem(ivan.delete("/policy/teams/ml"), 404)

        audited(ivan, {("policy_set", "ml", "ok"), ("policy_rm", "ml", "ok"), ("policy_rm", "ml", "refused")})


def test_refusals_change_nothing(server: Served) -> None:
    s = server
    with s.client("ivan") as ivan:
        assert ivan.put("/policy/teams/ml", json={"max_gpus_running": 2}).status_code == 200
    before = policy_file(s)

    for user in ("alice", "tina", "carl", "fiona"):
        with s.client(user) as c:
            for method, path, body in (
                ("PUT", "/policy/teams/ml", {"max_gpus_running": 64}),
                ("PUT", "/policy/teams/nlp", {"max_gpus_running": 64}),
                ("DELETE", "/policy/teams/ml", None),
                ("GET", "/policy/teams", None),
            ):
                r = c.request(method, path, json=body)
                assert "needs it-admin" in problem(r, 403), (user, method, path)
                assert policy_file(s) == before, (user, method, path)
    with httpx.Client(base_url=s.url + "/api/v1") as anonymous:
        problem(anonymous.put("/policy/teams/ml", json={"max_gpus_running": 64}), 401)

    bad: list[tuple[str, Any, int, str]] = [
        ("ml", {"max_gpus": 1}, 422, "max_gpus: Extra inputs are not permitted"),
        ("ml", {"max_gpus_running": "2"}, 422, "max_gpus_running: Input should be a valid integer"),
        ("ml", {"max_gpus_running": -1}, 422, "max_gpus_running must be a whole number >= 0"),
        ("ml", {"max_ttl": "8x"}, 422, "max_ttl: '8x' is not a duration"),
        ("ml", {"targets": ["onprem", "mars"]}, 422, "unknown target 'mars'; known: onprem, aws, gcp, azure"),
        ("ml", {"gpu_models": ["Z9"]}, 422, "unknown GPU model 'Z9' in gpu_models"),
        ("ml", [1, 2], 422, "body: Input should be a valid dictionary"),
        ("Not_A_Team", {"max_gpus_running": 1}, 422, "team: 'Not_A_Team' is not allowed"),
        ("cv", {"max_gpus_running": 1}, 409, "(policy.teams.cv); edit config.yaml there"),
    ]
    with s.client("ivan") as ivan:
        for team, body, status, message in bad:
            assert message in problem(ivan.put(f"/policy/teams/{team}", json=body), status), (team, body)
            assert policy_file(s) == before, (team, body)
        detail = problem(ivan.delete("/policy/teams/cv"), 409)
        assert (
            detail
            == f"team 'cv' is defined in {s.home / 'config.yaml'} line 3 (policy.teams.cv); edit config.yaml there"
        )
        problem(ivan.put("/policy/teams/ml", content=b"{not json", headers={"content-type": "application/json"}), 422)
        assert policy_file(s) == before
        assert ivan.get("/policy/teams").json()["teams"][1]["policy"]["max_gpus_running"] == 2


def test_cli_as_client_and_beside_the_server(tmp_path: Path) -> None:
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", config=CONFIG)
    try:
        remote = Deepops(home=tmp_path / "laptop", env=s.env | {"DEEPOPS_HOME": str(tmp_path / "laptop")})
        remote.env |= {"DEEPOPS_SERVER": s.url, "DEEPOPS_TOKEN": s.tokens["ivan"]}
        remote.run("policy", "set", "ml", "--max-gpus", "3", "--targets", "onprem", check=True)
        out = remote.run("policy", "set", "ml", "--max-ttl", "4h", check=True)  # keeps the other rules
        assert "team ml: targets=onprem, max_gpus_running=3, max_ttl=4h" in out.stderr
        assert not (tmp_path / "laptop" / "policy.yaml").exists()  # the server's file, not the laptop's
        with s.client("ivan") as ivan:
            assert remote.json("policy", "ls") == ivan.get("/policy/teams").json()
        refused = remote.run("policy", "set", "cv", "--max-gpus", "1")
        assert refused.returncode == 2 and "server refused (409): team 'cv' is defined in" in refused.stderr

        before = policy_file(s)
        member = Deepops(home=remote.home, env=remote.env | {"DEEPOPS_TOKEN": s.tokens["alice"]})
        for args in (("set", "ml", "--max-gpus", "64"), ("rm", "ml", "--yes")):
            proc = member.run("policy", *args)
            assert proc.returncode == 2 and proc.stderr.startswith("deepops: error: server refused (403): role member")
        assert policy_file(s) == before

        # the CLI on the server's machine writes the file; the running server follows at once
        local = Deepops(home=s.home, env=s.env)
        local.run("policy", "set", "ml", "--max-gpus", "1", "--replace", check=True)
        with s.client("alice") as alice:
            assert alice.get("/policy").json()["policies"]["ml"]["max_gpus_running"] == 1
        remote.run("policy", "rm", "ml", "--yes", check=True)
        with s.client("alice") as alice:
            assert alice.get("/policy").json()["policies"]["ml"]["max_gpus_running"] == 8
    finally:
        stop_server(s)
