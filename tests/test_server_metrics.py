"""Operating the team server: the access log, the reaper's cycle line, GET /metrics, /readyz.

One real `deepops serve` (reaper loop on, behind a trusted proxy) serves the end-to-end tests; the
ledger reads behind /metrics and /readyz are tested on both ledgers without a server."""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from deepops_infra.reaper.cycle import Action, Report
from deepops_infra.server.accesslog import value
from deepops_infra.server.edge import Refusals
from deepops_infra.server.metrics import ServerMetrics, readiness
from tests.conftest import wait_for
from tests.test_server_fixtures import Served, seed_machine, start_server, stop_server

CONFIG = """server:
  trusted_proxies: [127.0.0.1]
  reaper_interval: 1h
  rate_per_second: 1
  burst: 10
"""


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def access_lines(served: Served) -> list[str]:
    return [line for line in served.log().splitlines() if " INFO deepops.access " in line]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("metrics")
    s = start_server(tmp, f"sqlite:///{tmp / 'srv-home' / 'ledger.db'}", config=CONFIG, reaper=True)
    try:
        # The loop's first cycle runs at start; the machine is seeded after it, so no cycle sees it.
        wait_for(lambda: "reaper cycle " in s.log(), 120, "the reaper loop's first cycle")
        seed_machine(s.db(), "m-metrics1", "alice", "ml")
        yield s
    finally:
        stop_server(s)


@pytest.mark.slow
def test_every_request_has_one_access_line_and_its_metrics(server: Served) -> None:
    s = server
    seen: dict[int, int] = {}
    with s.client("alice") as alice:
        via_proxy = {"X-Forwarded-For": "203.0.113.7"}
        assert alice.get("/me", headers=via_proxy).status_code == 200
        assert alice.get("/machines/m-metrics1").status_code == 200
        for _ in range(2):  # the second answer may be the saved one: still alice's line
            assert alice.get("/machines").status_code == 200
    assert httpx.get(s.url + "/no/such%0Aforged=line").status_code == 404
    for i in range(14):  # made-up tokens from one address: 401s, then that address is held back
        token = f"dpo_{uuid.uuid4().hex}{i}"
        r = httpx.get(
            s.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.9"}
        )
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
    assert seen.get(429) and seen.get(401), seen
    assert httpx.get(s.url + "/readyz").json()["status"] == "ready"

    # Each line is written once its answer is sent: the last request's line means all are there.
    lines = wait_for(lambda: any("route=/readyz " in x for x in access_lines(s)) and access_lines(s), 30, "the lines")
    me = [line for line in lines if "route=/api/v1/me " in line and "user=alice" in line]
    assert len(me) == 1 and "method=GET" in me[0] and "status=200" in me[0] and me[0].endswith("client=203.0.113.7")
    assert " duration_ms=" in me[0] and "path=/api/v1/me " in me[0]
    [one] = [line for line in lines if "route=/api/v1/machines/{ref} " in line]
    assert "path=/api/v1/machines/m-metrics1 " in one and "user=alice" in one and one.endswith("client=127.0.0.1")
    listed = [line for line in lines if "route=/api/v1/machines " in line]
    assert len(listed) == 2 and all("user=alice" in line and "status=200" in line for line in listed)
    [missing] = [line for line in lines if "status=404" in line]
    assert 'route=unmatched path="/no/such\\nforged=line"' in missing and "user=-" in missing
    assert not any(line.startswith("forged") for line in s.log().splitlines())  # a path never splits a line
    refused = [line for line in lines if "client=198.51.100.9" in line]
    assert len(refused) == 14 and all("user=-" in line and "route=/api/v1/me " in line for line in refused)
    assert not any(token in s.log() for token in s.tokens.values())

    body = httpx.get(s.url + "/metrics").text
    found = samples(body)
    me_labels = {"method": "GET", "route": "/api/v1/me"}
    assert sample(found, "deepops_http_requests_total", status="200", **me_labels) == 1
    assert sample(found, "deepops_http_requests_total", status="401", **me_labels) == seen[401]
    assert sample(found, "deepops_http_request_duration_seconds_count", status="429", **me_labels) == seen[429]
    assert sample(found, "deepops_http_requests_total", method="GET", route="/api/v1/machines", status="200") == 2
    assert sample(found, "deepops_token_refusals_total") == seen[401]
    assert sample(found, "deepops_rate_limit_refusals_total") == seen[429]
    assert sample(found, "deepops_machines", state="ready", target="onprem") == 1
    assert sample(found, "deepops_launches_in_flight") == 0 and sample(found, "deepops_releases_in_flight") == 0
    assert sample(found, "deepops_ledger_up") == 1 and sample(found, "process_resident_memory_bytes")
    # Counts only: nobody's name, address or token.
    for private in ("alice", "203.0.113", "198.51.100", "m-metrics1", *s.tokens.values()):
        assert private not in body


@pytest.mark.slow
def test_the_reaper_loop_logs_and_counts_each_cycle(server: Served) -> None:
    [line] = [line for line in server.log().splitlines() if "reaper cycle " in line]
    assert " INFO deepops.server.reaper reaper cycle dry_run=no duration_s=" in line
    assert "actions=0 by_reason=- by_outcome=- errors=" in line and line.endswith("capped=no")
    found = samples(httpx.get(server.url + "/metrics").text)
    cycles = sum(v for (name, _), v in found.items() if name == "deepops_reaper_cycles_total")
    assert cycles == 1 and sample(found, "deepops_reaper_cycle_duration_seconds_count") == 1
    assert sample(found, "deepops_reaper_last_cycle_timestamp_seconds")


def test_the_cycle_summary_counts_actions_by_reason_and_outcome() -> None:
    report = Report(started_at=datetime.now(UTC), dry_run=False, duration_seconds=2.5)
    report.machines_by_state = {"ready": 3, "idle": 1}
    report.actions = [
        Action("teardown", "idle", "idle 2h", "aws", outcome="done"),
        Action("teardown", "ttl-expired", "past 8h", "aws", outcome="failed"),
        Action("warn", "idle", "idle 1h", "onprem", outcome="done"),
    ]
    report.errors = ["gcp: discovery failed: boom"]
    assert report.summary() == (
        "reaper cycle dry_run=no duration_s=2.500 machines=4 actions=3 by_reason=idle:2,ttl-expired:1 "
        "by_outcome=done:2,failed:1 errors=1 capped=no"
    )
    metrics = ServerMetrics(_fake_server(None))
    metrics.reaper_cycle(report)
    found = samples(metrics.render().decode())
    assert sample(found, "deepops_reaper_actions_total", action="teardown", reason="idle", outcome="done") == 1
    assert sample(found, "deepops_reaper_errors_total") == 1
    assert sample(found, "deepops_reaper_cycles_total", result="errors") == 1


def test_log_values_never_split_a_line() -> None:
    assert value("/api/v1/machines/{ref}") == "/api/v1/machines/{ref}"
    assert value("a b") == '"a b"' and value('x"\ny') == '"x\\"\\ny"'
    assert value("") == '""' and len(value("/" + "a b" * 500)) < 220


def _fake_server(ledger: Any, launches: int = 0) -> Any:
    return SimpleNamespace(
        ledger=ledger,
        workers=SimpleNamespace(in_flight=launches),
        releasers=SimpleNamespace(in_flight=0),
        refusals=Refusals(),
    )


def test_machines_by_state_and_target_come_from_the_ledger(ledger_url: str) -> None:
    from deepops_infra.ledger.db import Ledger

    ledger = Ledger(ledger_url)
    try:
        seed_machine(ledger, "m-a", "alice", "ml")
        seed_machine(ledger, "m-b", "bob", "ml")
        seed_machine(ledger, "m-c", "bob", "ml")
        with ledger.write() as session:
            session.execute(text("UPDATE machines SET status = 'idle', cloud = 'aws' WHERE id = 'm-b'"))
            session.execute(text("UPDATE machines SET status = 'terminated', ended_at = created_at WHERE id = 'm-c'"))
        server = _fake_server(ledger, launches=2)
        server.refusals.add(401)
        found = samples(ServerMetrics(server).render().decode())
        machines = {
            dict(labels)["state"] + "/" + dict(labels)["target"]: v
            for (n, labels), v in found.items()
            if n == "deepops_machines"
        }
        assert machines == {"ready/onprem": 1, "idle/aws": 1}  # ended machines are not counted
        assert sample(found, "deepops_launches_in_flight") == 2 and sample(found, "deepops_token_refusals_total") == 1
        assert readiness(server) == (True, "ledger reachable, schema at " + _head())
        with ledger.write() as session:
            session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        ready, why = readiness(server)
        assert not ready and why.startswith("the ledger's schema is at 9999, this server needs " + _head())
    finally:
        ledger.close()


def test_an_unreachable_ledger_is_reported_not_raised() -> None:
    class Down:
        """A ledger whose database refuses every connection, with words that must not be repeated."""

        class engine:
            @staticmethod
            def connect() -> Any:
                raise OSError("connection refused by db.internal with password hunter2")

        def read(self) -> Any:
            return self.engine.connect()

    server = _fake_server(Down())
    found = samples(ServerMetrics(server).render().decode())
    assert sample(found, "deepops_ledger_up") == 0 and sample(found, "deepops_machines") is None
    assert readiness(server) == (False, "the ledger does not answer (OSError)")


def test_workers_count_what_is_in_flight() -> None:
    import time

    from deepops_infra.server.worker import Workers, warm

    with Workers(1) as pool:
        pool.submit(warm).result()  # warming a worker is not a launch
        assert pool.in_flight == 0
        futures = [pool.submit(time.sleep, 0.3) for _ in range(2)]
        assert pool.in_flight == 2
        for future in futures:
            future.result()
        wait_for(lambda: pool.in_flight == 0, 30, "the count to drop")


def test_reap_cli_prints_the_cycle_line(sqlite_deepops: Any) -> None:
    proc = sqlite_deepops.run("reap", "--once", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "reaper cycle dry_run=yes duration_s=" in proc.stderr and "actions=0 by_reason=-" in proc.stderr


def _head() -> str:
    from deepops_infra.ledger import HEAD_REVISION

    return HEAD_REVISION


@pytest.mark.parametrize(("access", "anonymous", "with_token"), [("token", 401, 200), ("off", 404, 404)])
def test_metrics_access_is_configurable(access: str, anonymous: int, with_token: int) -> None:
    from typing import Annotated

    from fastapi import Depends, FastAPI, Header

    from deepops_infra.server.metrics import register_operations
    from deepops_infra.server.problems import Problem

    def caller(authorization: Annotated[str | None, Header()] = None) -> str:
        if authorization != "Bearer good":
            raise Problem(401, "send a token")
        return "prometheus"

    server = _fake_server(None)
    server.metrics = ServerMetrics(server)
    app = FastAPI()

    @app.exception_handler(Problem)
    async def _problem(request: Any, exc: Problem) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    register_operations(app, server, Annotated[str, Depends(caller)], access)

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/metrics"), await client.get("/metrics", headers={"Authorization": "Bearer good"})

    plain, answer = asyncio.run(ask())
    assert plain.status_code == anonymous and answer.status_code == with_token
    if with_token == 200:
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "deepops_ledger_up 0.0" in answer.text
