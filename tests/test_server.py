"""The team server's API through a real `deepops serve` process: every role against every
endpoint (allowed ones work, the others are refused and change nothing), token expiry and
revocation, the audit log, problem details, size and rate limits."""

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from tests.test_server_fixtures import Served, make_token, seed_machine, served, served_pg, start_server, stop_server

__all__ = ["served", "served_pg"]  # fixtures used here

PROBLEM = "application/problem+json"
TABLES = ("machines", "events", "usage_intervals", "gpu_leases", "api_users", "api_tokens", "notifications")


def snapshot(s: Served) -> dict[str, Any]:
    """Everything a refused request must leave as it was (the audit log is meant to grow)."""
    ledger = s.db()
    with ledger.read() as session:
        counts = {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}
        machines = session.execute(text("SELECT id, status, expires_at, ended_at FROM machines ORDER BY id")).all()
        tokens = session.execute(text("SELECT id, revoked_at FROM api_tokens ORDER BY id")).all()
    return {"counts": counts, "machines": machines, "tokens": tokens, "pool": (s.home / "pool.yaml").read_text()}


def seed(s: Served) -> None:
    ledger = s.ledger()
    seed_machine(ledger, "m-alice001", "alice", "ml")
    seed_machine(ledger, "m-bob00001", "bob", "ml")
    seed_machine(ledger, "m-carl0001", "carl", "cv", price="3.00")
    ledger.close()


def token_id_of(s: Served, user: str) -> str:
    from deepops_infra.ledger.schema import ApiToken

    ledger = s.ledger()
    with ledger.read() as session:
        tid = session.scalars(select(ApiToken.id).where(ApiToken.user_name == user)).first()
    ledger.close()
    return tid


# (method, path, body, {user: expected status}); users not named are refused with 403; None: allowed,
# but destructive, so tested on its own below.
ALICES = {"alice": 200, "bob": 404, "tina": 200, "carl": 404, "ivan": 200}
ALL_BUT_FINANCE = {"alice": 200, "bob": 200, "tina": 200, "carl": 200, "ivan": 200}
EVERYONE = {u: 200 for u in ("alice", "bob", "tina", "carl", "ivan", "fiona")}
READERS = {"fiona": 200, "tina": 200, "carl": 200, "ivan": 200}
NEW_HOST = {
    "name": "gpu-9",
    "address": "10.0.0.9",
    "rates": {"gpu_hour": 2, "host_hour": 0.1},
    "gpus": [{"index": 0, "model": "A100"}],
}


def matrix(s: Served) -> list[tuple[str, str, Any, dict[str, int]]]:
    bob_token = token_id_of(s, "bob")
    return [
        ("GET", "/machines/m-alice001", None, {"alice": 200, "bob": 404, "tina": 200, "carl": 404, "ivan": 200}),
        (
            "POST",
            "/machines/m-alice001/extend",
            {"ttl": "1h"},
            {"alice": 200, "bob": 404, "tina": 200, "carl": 404, "ivan": 200},
        ),
        ("DELETE", "/machines/m-alice001", None, {"alice": None, "bob": 404, "tina": None, "carl": 404, "ivan": None}),
        ("DELETE", "/machines/m-carl0001", None, {"alice": 404, "bob": 404, "tina": 404, "carl": None, "ivan": None}),
        (
            "POST",
            "/machines",
            {"gpus": "0", "ttl": "30m", "dry_run": True},
            {"alice": 200, "bob": 200, "tina": 200, "carl": 200, "ivan": 200},
        ),
        ("POST", "/machines", {"gpus": "0", "owner": "bob", "dry_run": True}, {"bob": 200, "tina": 200, "ivan": 200}),
        ("POST", "/machines", {"gpus": "0", "team": "cv", "dry_run": True}, {"carl": 200, "ivan": 200}),
        ("GET", "/offers", None, ALL_BUT_FINANCE),
        ("GET", "/policy", None, EVERYONE),
        ("GET", "/pool", None, {"ivan": 200}),
        ("POST", "/pool/hosts", NEW_HOST, {"ivan": 201}),
        ("DELETE", "/pool/hosts/localhost", None, {"ivan": None}),
        ("GET", "/costs", None, READERS),
        ("GET", "/costs?format=csv&by=team", None, READERS),
        ("GET", "/budgets", None, READERS),
        ("POST", "/tokens", {"user": "zed", "team": "ml", "role": "it-admin"}, {"ivan": 201}),
        (
            "DELETE",
            f"/tokens/{bob_token}",
            None,
            {"alice": 404, "bob": None, "tina": 404, "carl": 404, "ivan": None, "fiona": 404},
        ),
        ("GET", "/audit", None, {"ivan": 200}),
        ("GET", "/me", None, EVERYONE),
        ("GET", "/tokens", None, EVERYONE),
    ]


def call(c: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    return c.request(method, path, json=body) if body is not None else c.request(method, path)


def test_every_role_against_every_endpoint(served: Served) -> None:
    seed(served)
    for method, path, body, allowed in matrix(served):
        for user in ("alice", "bob", "tina", "carl", "ivan", "fiona"):
            expected = allowed.get(user, 403)
            if expected is None:
                continue
            before = snapshot(served)
            with served.client(user) as c:
                r = call(c, method, path, body)
            assert r.status_code == expected, (user, method, path, r.status_code, r.text)
            if expected >= 400:
                assert r.headers["content-type"] == PROBLEM and r.json()["status"] == expected
                assert snapshot(served) == before, f"{user} {method} {path} was refused but changed the ledger"
            elif method == "POST" and path == "/pool/hosts":
                with served.client("ivan") as c:  # undo, so the next user is tested against the same pool
                    assert c.delete("/pool/hosts/gpu-9").status_code == 200


def test_visibility_and_scoped_reports(served: Served) -> None:
    started = time.monotonic()
    seed(served)

    def at_most(per_hour: float) -> float:  # 6.00 for the seeded two hours, plus the time since
        return 6.0 + per_hour * (time.monotonic() - started) / 3600 + 1e-6

    ids = {}
    for user in ("alice", "bob", "tina", "carl", "ivan"):
        with served.client(user) as c:
            ids[user] = sorted(m["id"] for m in c.get("/machines").json())
    assert ids == {
        "alice": ["m-alice001"],
        "bob": ["m-bob00001"],
        "tina": ["m-alice001", "m-bob00001"],
        "carl": ["m-carl0001"],
        "ivan": ["m-alice001", "m-bob00001", "m-carl0001"],
    }
    with served.client("carl") as c:
        rows = c.get("/costs", params={"by": "team"}).json()["rows"]
    assert [r["team"] for r in rows] == ["cv"]
    with served.client("alice") as c:
        r = c.delete("/machines/m-alice001")
        assert r.status_code == 200 and r.json()["machine"]["status"] == "terminated"
        assert c.delete("/machines/m-alice001").status_code == 422  # already ended
        assert [m["id"] for m in c.get("/machines", params={"all": True}).json()] == ["m-alice001"]
    # 2 h at 3.00/h = 6.00 (seeded two hours ago), and what the time since added
    assert 6.0 <= rows[0]["cost"] <= at_most(3.0)
    with served.client("fiona") as c:
        teams = {r["team"]: r["cost"] for r in c.get("/costs", params={"by": "team"}).json()["rows"]}
        assert set(teams) == {"ml", "cv"} and 6.0 <= teams["ml"] <= at_most(3.0)  # 2 machines x 2 h x 1.50/h
        assert c.get("/machines").status_code == 403


def test_extend_within_policy_and_audit(served: Served) -> None:
    seed(served)
    with served.client("alice") as c:
        before = c.get("/machines/m-alice001").json()["expires_at"]
        r = c.post("/machines/m-alice001/extend", json={"ttl": "2h"})
        assert r.status_code == 200 and r.json()["expires_at"] > before
        r = c.post("/machines/m-alice001/extend", json={"ttl": "30d"})
        assert r.status_code in (403, 422) and r.headers["content-type"] == PROBLEM
        assert "max_ttl" in r.json()["detail"] or "at most" in r.json()["detail"]
    with served.client("bob") as c:
        assert c.post("/machines/m-alice001/extend", json={"ttl": "1h"}).status_code == 404
    with served.client("ivan") as c:
        audit = c.get("/audit").json()
    entries = [(a["actor"], a["action"], a["target"], a["status"], a["outcome"]) for a in audit]
    assert ("alice", "extend_machine", "m-alice001", 200, "ok") in entries
    assert ("bob", "extend_machine", "m-alice001", 404, "refused") in entries
    assert all(a["at"].endswith("Z") for a in audit)


def test_token_expiry_and_revocation(served: Served) -> None:
    ledger = served.ledger()
    short = make_token(ledger, "alice", None, None, ttl=timedelta(seconds=2))
    ledger.close()
    with served.client(token=short) as c:
        assert c.get("/me").json()["user"] == "alice"
        time.sleep(2.2)
        r = c.get("/me")
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    with served.client("bob") as c:
        made = c.post("/tokens", json={"label": "laptop", "ttl": "1d"}).json()
        assert made["token"].startswith("dpo_") and made["user"] == "bob"
        listed = c.get("/tokens").json()
        assert made["token"] not in str(listed) and {t["id"] for t in listed} >= {made["id"]}
    with served.client(token=made["token"]) as c:
        assert c.get("/me").json()["user"] == "bob"
        assert c.delete(f"/tokens/{made['id']}").json()["state"] == "revoked"
        assert c.get("/me").status_code == 401
    # only the hash is stored
    ledger = served.ledger()
    with ledger.read() as session:
        stored = session.execute(text("SELECT token_hash FROM api_tokens")).scalars().all()
    ledger.close()
    assert made["token"] not in stored and len(stored[0]) == 64
    with served.client(token="dpo_" + "x" * 43) as c:
        assert c.get("/machines").status_code == 401
    assert httpx.get(served.url + "/api/v1/machines").status_code == 401


def test_bad_input_is_a_problem_and_creates_nothing(served: Served) -> None:
    seed(served)
    before = snapshot(served)
    with served.client("alice") as c:
        cases = [
            ({"gpus": "Z9000:3"}, 422),
            ({"gpus": "0", "ttl": "forever"}, 422),
            ({"gpus": "0", "cloud": "mars"}, 422),
            ({"gpus": "0", "host": "no-such-host"}, 404),
            ({"gpus": "0", "image": "nope"}, 404),
            ({"gpus": "0", "disk": 0}, 422),
            ({"gpus": "0", "surprise": 1}, 422),
            ({"gpus": "0", "project": "Not A Label"}, 422),
        ]
        for body, status in cases:
            r = c.post("/machines", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"] == PROBLEM and r.json()["detail"], body
        r = c.post("/machines", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        r = c.post("/machines", content=b"x" * 70000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
        assert c.get("/machines/m-nope").status_code == 404
        assert c.get("/costs", params={"month": "2026-13"}).status_code == 403  # member: no costs at all
    with served.client("fiona") as c:
        r = c.get("/costs", params={"month": "2026-13"})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
        assert c.get("/costs", params={"by": "colour"}).status_code == 422
    assert snapshot(served) == before


def test_like_and_keep_on_failure_go_through_the_server(served: Served) -> None:
    seed(served)
    ledger = served.db()
    with ledger.write() as session:  # alice's machine ran on the pool's localhost, its pin unrecorded
        session.execute(text("UPDATE machines SET host = 'localhost', image_pin = NULL WHERE id = 'm-alice001'"))
    before = snapshot(served)
    with served.client("alice") as c:
        r = c.post("/machines", json={"like": "m-alice001", "dry_run": True})
        assert r.status_code == 200, r.text
        assert (r.json()["image"], r.json()["plan"]["host"]) == ("cpu-minimal", "localhost")
    with served.client("bob") as c:  # another member's machine cannot be copied, nor even named
        r = c.post("/machines", json={"like": "m-alice001", "dry_run": True})
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert snapshot(served) == before

    # A host that refuses SSH: the launch fails; kept for debugging, it holds its lease until released.
    with (served.home / "pool.yaml").open("a") as pool:
        pool.write("  - name: deadhost\n    address: 127.0.0.1\n    port: 9\n    user: nobody\n")
        pool.write("    rates: {gpu_hour: 2, host_hour: 0.1}\n")
    with served.client("alice") as c:
        r = c.post("/machines", json={"gpus": "0", "host": "deadhost", "keep_on_failure": True})
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        deadline = time.monotonic() + 120
        while (m := c.get(f"/machines/{mid}").json())["status"] != "failed":
            assert time.monotonic() < deadline, m
            time.sleep(0.5)
        assert m["ended_at"] is None and any(e["kind"] == "kept" for e in m["events"])
        assert c.delete(f"/machines/{mid}").json()["machine"]["ended_at"]


def test_listing_answers_are_reused_briefly_and_dropped_on_changes(served: Served) -> None:
    seed(served)
    with served.client("alice") as c:
        first = c.get("/machines").json()
        assert [m["id"] for m in first] == ["m-alice001"]
        seed_machine(served.db(), "m-alice002", "alice", "ml")  # written by another process
        assert [m["id"] for m in c.get("/machines").json()] == ["m-alice001"]  # the answer of a moment ago
        time.sleep(1.1)  # server.list_cache_seconds (1 s by default) later: read again
        assert [m["id"] for m in c.get("/machines").json()] == ["m-alice001", "m-alice002"]
        expires = {m["id"]: m["expires_at"] for m in c.get("/machines").json()}
        extended = c.post("/machines/m-alice001/extend", json={"ttl": "1h"}).json()
        assert extended["expires_at"] != expires["m-alice001"]
        listed = {m["id"]: m["expires_at"] for m in c.get("/machines").json()}  # a change through the server:
        assert listed["m-alice001"] == extended["expires_at"]  # seen at once
    with served.client("bob") as c:  # another scope has its own answer
        assert [m["id"] for m in c.get("/machines").json()] == ["m-bob00001"]
        assert [m["id"] for m in c.get("/machines").json()] == ["m-bob00001"]  # the saved one
        assert c.get("/machines", headers={"Authorization": "Bearer dpo_nope"}).status_code == 401
        c.delete(f"/tokens/{token_id_of(served, 'bob')}")  # revoked: a saved answer is no pass
        r = c.get("/machines")
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM


def test_rate_limit(tmp_path: Any) -> None:
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'rl.db'}", config="server:\n  rate_per_second: 1\n  burst: 5\n")
    try:
        with s.client("alice") as c:
            codes = [c.get("/me").status_code for _ in range(8)]
            assert codes[:5] == [200] * 5 and codes[-1] == 429
            r = c.get("/me")
            assert r.headers["content-type"] == PROBLEM and int(r.headers["retry-after"]) >= 1
        with s.client("bob") as c:  # one caller's limit is not another's
            assert c.get("/me").status_code == 200
    finally:
        stop_server(s)


def test_made_up_tokens_count_against_the_address(tmp_path: Any) -> None:
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'rt.db'}", config="server:\n  rate_per_second: 1\n  burst: 5\n")
    try:
        with s.client("alice") as c:
            assert c.get("/me").status_code == 200  # checked: alice's token is known from now on
        codes = []
        for i in range(7):  # each a fresh token: a limit per token would never apply
            with s.client(token=f"dpo_made-up-{i}") as c:
                r = c.get("/me")
                codes.append(r.status_code)
        assert codes[:5] == [401] * 5 and codes[-1] == 429, codes
        assert "too many refused tokens from your address" in r.json()["detail"]
        with s.client("alice") as c:  # a known token from the same address is not held back
            assert c.get("/me").status_code == 200
    finally:
        stop_server(s)


def test_rate_limiter_forgets_full_buckets() -> None:
    from deepops_infra.server.app import RateLimiter

    limiter = RateLimiter(rate=100.0, burst=2)
    limiter.MAX_KEYS = 3
    assert limiter.allow("a") == 0 and limiter.allow("a") == 0 and limiter.allow("a") > 0
    assert limiter.wait("a") > 0  # empty, and wait() counts nothing:
    time.sleep(0.05)  # every bucket refills at 100/s
    assert limiter.wait("a") == 0 and limiter.wait("a") == 0
    for key in ("b", "c"):
        assert limiter.allow(key) == 0
    assert set(limiter._buckets) == {"a", "b", "c"}
    time.sleep(0.05)  # full again: as good as no bucket
    assert limiter.allow("d") == 0
    assert set(limiter._buckets) == {"d"}  # made-up keys cannot grow the table without bound


def test_bad_server_config_is_refused_at_start(tmp_path: Any) -> None:
    with pytest.raises(AssertionError, match=r"config.yaml:2.*server setting 'colour'"):
        start_server(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", config="server:\n  colour: blue\n")


@pytest.mark.postgres
def test_roles_on_postgresql_leave_nothing_behind(served_pg: Served) -> None:
    """The PostgreSQL server: refused mutations by every role, then the ledger compared."""
    seed(served_pg)
    before = snapshot(served_pg)
    for user in ("alice", "bob", "tina", "carl", "fiona"):
        with served_pg.client(user) as c:
            for method, path, body in (
                ("DELETE", "/machines/m-carl0001" if user != "carl" else "/machines/m-alice001", None),
                ("POST", "/pool/hosts", {"name": "gpu-9", "address": "10.0.0.9"}),
                ("POST", "/tokens", {"user": "mallory", "role": "it-admin", "team": "it"}),
                ("DELETE", "/pool/hosts/localhost", None),
            ):
                assert call(c, method, path, body).status_code in (403, 404)
    assert snapshot(served_pg) == before
