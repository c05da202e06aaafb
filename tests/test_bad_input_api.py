"""Bad input through the team server's API (issue 13, items 10, 13 and 14): overflowing or empty
durations and other empty values are a 422 problem, never a 500 or "not given"; a dry run is
refused as the real request would be; nothing is written."""

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.test_server_fixtures import Served, seed_machine, start_server, stop_server

PROBLEM = "application/problem+json"
OVERFLOW = "9999999999999d"  # within the fields' 16 characters, far past what a date can hold


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM and r.json()["status"] == status
    return r.json()["detail"]


def count(s: Served, table: str) -> int:
    with s.db().read() as session:
        return session.execute(text(f"SELECT count(*) FROM {table}")).scalar()


@pytest.fixture
def server(tmp_path: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    s = start_server(
        tmp_path,
        ledger_url,
        config="budgets:\n  refuse_over_budget: true\n  teams:\n    ml: 5\n",
    )
    yield s
    stop_server(s)


def test_bad_durations_and_empty_values_are_422_and_write_nothing(server: Served) -> None:
    seed_machine(server.db(), "m-alice001", "alice", "ml", hours_ago=0.1)
    machines, tokens = count(server, "machines"), count(server, "api_tokens")
    cpu = {"gpus": "0", "cloud": "onprem"}
    with server.client("alice") as alice, server.client("ivan") as ivan:
        assert "too long" in problem(alice.post("/machines", json=cpu | {"ttl": OVERFLOW, "dry_run": True}), 422)
        assert "too long" in problem(alice.post("/machines", json=cpu | {"ttl": OVERFLOW}), 422)
        assert "too long" in problem(alice.post("/machines", json=cpu | {"idle_timeout": OVERFLOW}), 422)
        assert "not a duration" in problem(alice.post("/machines", json=cpu | {"ttl": "\uff15h"}), 422)
        for field in ("ttl", "idle_timeout", "image", "cloud", "name", "gpus", "region"):
            detail = problem(alice.post("/machines", json=cpu | {field: "", "dry_run": True}), 422)
            assert "empty" in detail or "malformed" in detail, (field, detail)

        assert "too long" in problem(alice.post("/machines/m-alice001/extend", json={"ttl": OVERFLOW}), 422)
        assert "not a duration" in problem(alice.post("/machines/m-alice001/extend", json={"ttl": ""}), 422)

        assert "too long" in problem(ivan.post("/tokens", json={"ttl": OVERFLOW}), 422)
        assert "not a duration" in problem(ivan.post("/tokens", json={"ttl": ""}), 422)
    assert (count(server, "machines"), count(server, "api_tokens")) == (machines, tokens)


def test_dry_run_is_refused_over_budget_as_the_real_request(server: Served) -> None:
    """Team ml has spent past its refusing budget: a dry run says so, as the real request does."""
    seed_machine(server.db(), "m-alice001", "alice", "ml", price="1000", hours_ago=1)
    machines = count(server, "machines")
    cpu = {"gpus": "0", "cloud": "onprem", "dry_run": True}
    with server.client("alice") as alice, server.client("carl") as carl:
        assert "rule budgets.teams.ml" in problem(alice.post("/machines", json=cpu), 403)
        assert "rule budgets.teams.ml" in problem(alice.post("/machines", json=cpu | {"dry_run": False}), 403)
        assert carl.post("/machines", json=cpu).status_code == 200  # team cv has no budget to pass
    assert count(server, "machines") == machines
