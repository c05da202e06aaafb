"""What the team server trusts and tells (issue 13, items 15-18): the client address behind
proxies, refusals that write nothing, machine names scoped to what a caller sees, and the headers
on every answer. Through a real `deepops serve` process, and the ASGI app in this process where a
test needs another client address or the server's own counters."""

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.test_server_fixtures import Served, make_token, seed_machine, served, start_server, stop_server

__all__ = ["served"]  # a fixture used here

PROBLEM = "application/problem+json"
TABLES = ("machines", "events", "usage_intervals", "gpu_leases", "api_users", "api_tokens", "notifications")


def audit_rows(s: Served) -> list[tuple[Any, ...]]:
    with s.db().read() as session:
        return list(session.execute(text("SELECT actor, action, status_code, client FROM audit_log ORDER BY id")))


# -- 15: X-Forwarded-For only from configured proxies ---------------------------------------------


def test_client_address_rules() -> None:
    from ipaddress import ip_network

    from deepops_infra.server.edge import client_address

    proxies = (ip_network("10.0.0.0/8"), ip_network("::1/128"))
    assert client_address("192.0.2.1", ["203.0.113.9"], ()) == "192.0.2.1"  # no proxies: the peer
    assert client_address("192.0.2.1", ["203.0.113.9"], proxies) == "192.0.2.1"  # an untrusted peer
    assert client_address("10.1.1.1", [], proxies) == "10.1.1.1"  # a proxy sending no header: itself
    assert client_address("10.1.1.1", ["203.0.113.9"], proxies) == "203.0.113.9"
    # the right-most address no proxy of ours added: what the client wrote before it is not believed
    assert client_address("10.1.1.1", ["6.6.6.6, 203.0.113.9, 10.2.2.2"], proxies) == "203.0.113.9"
    assert client_address("10.1.1.1", ["6.6.6.6", "203.0.113.9"], proxies) == "203.0.113.9"  # two headers
    assert client_address("::1", ["2001:db8::7"], proxies) == "2001:db8::7"
    assert client_address("10.1.1.1", ["10.3.3.3, 10.2.2.2"], proxies) == "10.3.3.3"  # proxies all the way
    assert client_address("10.1.1.1", ["203.0.113.9, not-an-address"], proxies) == "10.1.1.1"  # garbage
    assert client_address(None, ["203.0.113.9"], proxies) == "?"


def test_trusted_proxies_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.server.settings import ServerSettings
    from deepops_infra.yamlfile import FileError

    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    (tmp_path / "config.yaml").write_text("server:\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8, '::1']\n")
    nets = ServerSettings.load(Settings(home=tmp_path)).trusted_proxies
    assert [str(n) for n in nets] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert ServerSettings().trusted_proxies == ()  # the default: no proxy is trusted
    for bad, message in (
        ("[proxy.example]", "server.trusted_proxies: 'proxy.example' is not an address or a CIDR"),
        ("10.0.0.1", "server.trusted_proxies must be a list of addresses or CIDRs"),
        ("[5]", "server.trusted_proxies: 5 is not an address or a CIDR"),
    ):
        (tmp_path / "config.yaml").write_text(f"server:\n  trusted_proxies: {bad}\n")
        with pytest.raises(FileError, match=re.escape(message)) as caught:
            ServerSettings.load(Settings(home=tmp_path))
        assert ":2" in str(caught.value)  # the line


def anonymous_codes(s: Served, forwarded: list[str]) -> list[int]:
    return [httpx.get(s.url + "/api/v1/me", headers={"X-Forwarded-For": f}).status_code for f in forwarded]


def test_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    s = start_server(
        tmp_path, f"sqlite:///{tmp_path / 'l.db'}", config="server:\n  rate_per_second: 0.01\n  burst: 5\n"
    )
    try:
        with s.client("alice") as c:
            r = c.post("/tokens", json={"label": "x"}, headers={"X-Forwarded-For": "198.51.100.66"})
            assert r.status_code == 201, r.text
        assert audit_rows(s) == [("alice", "create_token", 201, "127.0.0.1")]  # the real peer, not the header
        # A fresh made-up address per request: the limit still applies to the peer that sends them.
        codes = anonymous_codes(s, [f"198.51.100.{i}" for i in range(12)])
        assert codes[-3:] == [429] * 3, codes
    finally:
        stop_server(s)


def test_forwarded_for_from_a_configured_proxy(tmp_path: Path) -> None:
    config = "server:\n  rate_per_second: 0.01\n  burst: 5\n  trusted_proxies: [127.0.0.1]\n"
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'l.db'}", config=config)
    try:
        with s.client("alice") as c:
            # The proxy appended the client's address; the client forged the one before it.
            r = c.post("/tokens", json={"label": "x"}, headers={"X-Forwarded-For": "198.51.100.66, 203.0.113.7"})
            assert r.status_code == 201, r.text
            assert c.post("/tokens", json={"label": "y"}).status_code == 201  # the proxy's own request
        assert [row[3] for row in audit_rows(s)] == ["203.0.113.7", "127.0.0.1"]
        codes = anonymous_codes(s, ["203.0.113.7"] * 8 + ["203.0.113.7, 127.0.0.1"])
        assert codes[-3:] == [429] * 3, codes  # one client behind the proxy runs out of its own budget
        assert anonymous_codes(s, ["203.0.113.8"]) == [401]  # and another behind it has its own
    finally:
        stop_server(s)


# -- 16: refused before anything is written, and counted --------------------------------------------


def in_process(tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch, config: str) -> Any:
    """The server's ASGI app in this process, on `ledger_url`, with alice's and bob's tokens and a machine."""
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.server.app import create_app

    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(config)
    (home / "pool.yaml").write_text("include_localhost: false\nhosts: []\n")
    for name in ("DEEPOPS_CONFIG", "DEEPOPS_POOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPOPS_HOME", str(home))
    monkeypatch.setenv("DEEPOPS_LEDGER_URL", ledger_url)
    ledger = Ledger(ledger_url)
    tokens = {u: make_token(ledger, u, "ml", "member") for u in ("alice", "bob")}
    seed_machine(ledger, "m-alice001", "alice", "ml")
    ledger.close()
    app = create_app(Settings(home=home))
    app.state.tokens = tokens
    return app


def run_app(app: Any, calls: Any) -> Any:
    """`await calls(client_for)` with the app's lifespan around it; client_for(address, token) is
    an httpx client whose requests come from that address."""

    async def main() -> Any:
        clients: list[httpx.AsyncClient] = []

        def client_for(address: str, token: str | None = None) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000), raise_app_exceptions=False)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            clients.append(httpx.AsyncClient(transport=transport, base_url="http://deepops.test", headers=headers))
            return clients[-1]

        async with app.router.lifespan_context(app):
            try:
                return await calls(client_for)
            finally:
                for c in clients:
                    await c.aclose()

    return asyncio.run(main())


def ledger_counts(url: str) -> dict[str, int]:
    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(url)
    try:
        with ledger.read() as session:
            return {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in (*TABLES, "audit_log")}
    finally:
        ledger.close()


def test_anonymous_and_rate_limited_requests_write_nothing_and_are_counted(
    tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = in_process(tmp_path, ledger_url, monkeypatch, "server:\n  rate_per_second: 0.01\n  burst: 10\n")
    before = ledger_counts(ledger_url)
    alice = app.state.tokens["alice"]

    async def flood(client_for: Any) -> dict[str, list[int]]:
        codes: dict[str, list[int]] = {"anonymous": [], "made-up": [], "alice": []}
        anonymous = client_for("192.0.2.10")
        for _ in range(15):  # no token at all: 401, then 429 once the address's budget is spent
            r = await anonymous.post("/api/v1/machines", json={"gpus": "0"})
            codes["anonymous"].append(r.status_code)
        for i in range(15):  # a new made-up token each time: 401, then 429 (refused tokens per address)
            r = await client_for("192.0.2.11", f"dpo_made-up-{i}").delete("/api/v1/machines/m-alice001")
            codes["made-up"].append(r.status_code)
        r = await anonymous.post("/api/v1/tokens", content=b"{not json", headers={"content-type": "application/json"})
        codes["anonymous"].append(r.status_code)
        mine = client_for("192.0.2.12", alice)  # a known caller: audited until rate-limited
        for _ in range(13):
            codes["alice"].append((await mine.post("/api/v1/machines/m-nope/extend", json={"ttl": "1h"})).status_code)
        return codes

    codes = run_app(app, flood)
    assert set(codes["anonymous"][:10]) == {401} and set(codes["anonymous"][10:]) == {429}, codes
    assert set(codes["made-up"][:10]) == {401} and set(codes["made-up"][10:]) == {429}, codes
    assert codes["alice"] == [404] * 10 + [429] * 3, codes
    after = ledger_counts(ledger_url)
    assert after == before | {"audit_log": before["audit_log"] + 10}  # alice's ten refusals, nothing else

    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(ledger_url)
    with ledger.read() as session:
        rows = set(session.execute(text("SELECT actor, action, status_code, client FROM audit_log")))
    ledger.close()
    assert rows == {("alice", "extend_machine", 404, "192.0.2.12")}
    refused = app.state.server.refusals.counts()
    assert refused == {401: 20, 429: 13 + 1}, refused  # the bad JSON came after the address's budget


# -- 17: names unique among what the caller sees -------------------------------------------------


def name_machine(s: Served, mid: str, owner: str, team: str, name: str) -> None:
    seed_machine(s.db(), mid, owner, team)
    with s.db().write() as session:
        session.execute(text("UPDATE machines SET name = :n WHERE id = :i"), {"n": name, "i": mid})


def table_counts(s: Served) -> dict[str, int]:
    with s.db().read() as session:
        return {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def test_machine_names_are_scoped_to_what_the_caller_sees(served: Served) -> None:
    s = served
    name_machine(s, "m-bobxxxx1", "bob", "ml", "x")  # alice's teammate: a member does not see it
    name_machine(s, "m-carlxxx1", "carl", "cv", "x")  # another team's
    with (s.home / "pool.yaml").open("a") as pool:  # a host that refuses SSH: the launch fails, kept
        pool.write("  - name: deadhost\n    address: 127.0.0.1\n    port: 9\n    user: nobody\n")
        pool.write("    rates: {gpu_hour: 2, host_hour: 0.1}\n")
    request = {"gpus": "0", "host": "deadhost", "name": "x", "ttl": "30m", "keep_on_failure": True}
    with s.client("alice") as alice:
        r = alice.post("/machines", json=request)
        assert r.status_code == 202, r.text  # others' machines called x are no business of alice's
        mine = r.json()["id"]
        counts = table_counts(s)
        r = alice.post("/machines", json=request)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        detail = r.json()["detail"]
        assert detail.startswith("--name: alice already has a machine called 'x'"), detail
        assert "carl" not in detail and "bob" not in detail and "m-" not in detail
    with s.client("tina") as tina:  # her team-admin, requesting for alice: the same refusal
        r = tina.post("/machines", json=request | {"owner": "alice"})
        assert r.status_code == 422 and r.json()["detail"].startswith("--name: alice already has"), r.text
    assert table_counts(s) == counts

    # A name is looked up among the machines the caller sees.
    for user, expected in (("alice", mine), ("bob", "m-bobxxxx1"), ("carl", "m-carlxxx1")):
        with s.client(user) as c:
            r = c.get("/machines/x")
            assert r.status_code == 200 and r.json()["id"] == expected, (user, r.text)
    with s.client("tina") as tina:  # two of her team's: ambiguous, naming those two only
        r = tina.get("/machines/x")
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        detail = r.json()["detail"]
        assert "m-bobxxxx1" in detail and mine in detail and "m-carlxxx1" not in detail, detail
        assert tina.post("/machines/x/extend", json={"ttl": "1h"}).status_code == 404
    with s.client("fiona") as fiona:
        assert fiona.get("/machines/x").status_code == 403
    with s.client("carl") as carl:
        assert carl.post("/machines/x/extend", json={"ttl": "1h"}).status_code == 200

    with s.client("alice") as alice:  # her own x, released by name
        deadline = time.monotonic() + 120
        while (m := alice.get(f"/machines/{mine}").json())["status"] != "failed":
            assert time.monotonic() < deadline, m
            time.sleep(0.5)
        r = alice.delete("/machines/x")
        assert r.status_code == 200 and r.json()["machine"]["id"] == mine, r.text


def test_a_name_is_free_again_per_owner_in_the_ledger(tmp_path: Path) -> None:
    from deepops_infra.ledger import store
    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    seed_machine(ledger, "m-bob00001", "bob", "ml")
    with ledger.write() as session:
        session.execute(text("UPDATE machines SET name = 'x'"))
    with ledger.read() as session:
        assert store.live_name_taken(session, "x", owner="bob")
        assert not store.live_name_taken(session, "x", owner="alice")
        assert store.find_machine(session, "x", within={"owner": "bob"}).id == "m-bob00001"
        with pytest.raises(Exception, match="no machine 'x'"):
            store.find_machine(session, "x", within={"owner": "alice"})
        assert store.find_machine(session, "m-bob00001", within={"owner": "alice"}).id == "m-bob00001"  # by ID
    ledger.close()


# -- 18: headers on every answer ------------------------------------------------------------------


def assert_api_headers(r: httpx.Response) -> None:
    assert r.headers.get("cache-control") == "no-store", (r.request.method, r.request.url, dict(r.headers))
    assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, dict(r.headers))


def assert_html_headers(r: httpx.Response) -> None:
    assert_api_headers(r)
    assert r.headers["content-type"].startswith("text/html"), r.headers
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (r.request.url, csp)


@pytest.fixture
def headers_server(tmp_path: Path) -> Iterator[Served]:
    config = "server:\n  rate_per_second: 0.01\n  burst: 40\n  list_cache_seconds: 60\n"
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'l.db'}", config=config)
    seed_machine(s.db(), "m-alice001", "alice", "ml")
    yield s
    stop_server(s)


def test_every_answer_is_not_stored_and_html_is_not_framed(headers_server: Served) -> None:
    s = headers_server
    answers: list[httpx.Response] = []
    with s.client("alice") as alice:
        answers += [alice.get("/machines"), alice.get("/machines")]  # the second: the saved answer
        assert answers[-1].json()[0]["id"] == "m-alice001"
        made = alice.post("/tokens", json={"label": "laptop"})  # the plaintext token, above all
        assert made.status_code == 201 and made.json()["token"].startswith("dpo_")
        answers += [made, alice.get("/me"), alice.get("/machines/m-alice001"), alice.get("/machines/m-nope")]
        answers += [alice.get("/costs"), alice.post("/machines", json={"gpus": "0", "surprise": 1})]
        answers.append(alice.post("/machines", content=b"x" * 70000, headers={"content-type": "application/json"}))
        answers.append(alice.request("PATCH", "/machines"))
    statuses = [r.status_code for r in answers]
    assert statuses == [200, 200, 201, 200, 200, 404, 403, 422, 413, 405], statuses
    with s.client(token="dpo_made-up") as bad:
        answers.append(bad.get("/machines"))
        assert answers[-1].status_code == 401
    with s.client("fiona") as fiona:
        report = fiona.get("/costs", params={"format": "html"})
        assert report.status_code == 200
        assert_html_headers(report)
        answers.append(fiona.get("/costs", params={"format": "csv"}))
    for path in ("/", "/docs"):
        page = httpx.get(s.url + path)
        assert page.status_code == 200
        assert_html_headers(page)
    answers += [httpx.get(s.url + p) for p in ("/openapi.json", "/static/app.js", "/healthz", "/nowhere")]
    for r in answers:
        assert_api_headers(r)
    codes = [httpx.get(s.url + "/api/v1/me").status_code for _ in range(40)]  # anonymous, one address
    limited = httpx.get(s.url + "/api/v1/me")
    assert limited.status_code == 429 and 401 in codes, codes
    assert_api_headers(limited)


def test_the_docs_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    s = start_server(tmp_path, f"sqlite:///{tmp_path / 'l.db'}")
    try:
        page = httpx.get(s.url + "/docs")
        assert page.status_code == 200
        assert_html_headers(page)
        html = page.text
        outside = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//[^"'\s>]*""", html, re.I)
        assert outside == [], outside
        for asset in re.findall(r"""(?:src|href)\s*=\s*["'](/static/[^"']+)""", html):
            r = httpx.get(s.url + asset)  # what the page loads is served here
            assert r.status_code == 200, asset
            assert not re.search(r"https?://", r.text), asset
        assert "openapi.json" in httpx.get(s.url + "/static/docs.js").text
        assert httpx.get(s.url + "/redoc").status_code == 404
        assert httpx.get(s.url + "/openapi.json").json()["paths"]
    finally:
        stop_server(s)


def test_a_server_error_is_not_stored_either(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = in_process(tmp_path, f"sqlite:///{tmp_path / 'home' / 'ledger.db'}", monkeypatch, "")

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/api/v1/boom", boom, methods=["GET"])

    async def call(client_for: Any) -> httpx.Response:
        return await client_for("192.0.2.20").get("/api/v1/boom")

    r = run_app(app, call)
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    assert_api_headers(r)
