"""What the team server tells the people who run it: `GET /metrics` (Prometheus text) and the
probes `GET /healthz` (the process answers) and `GET /readyz` (the ledger answers and its schema
is the one this server was built for).

Counted as things happen: requests and their latency by route template, method and status (fed by
the access-log layer, server/accesslog.py), the cycles of the server's reaper loop. Read when
scraped: machines by state and target (one grouped query on the ledger, reused for a few seconds
so that several scrapers cost one query), launches and releases in flight (the worker pools), token
and rate-limit refusals (edge.Refusals). Only counts leave: no user, team, token, address or machine
ID is ever a label, so an open /metrics tells nobody who does what.

Who may read /metrics is `deepops serve --metrics`: `public` (the default, as most exporters: a
scraper holds no credential; keep the path off a public ingress), `token` (any valid API token,
sent by the scraper as a bearer token), or `off` (404).
"""

import threading
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

if TYPE_CHECKING:
    from deepops_infra.server.app import Server

METRICS_ACCESS = ("public", "token", "off")
LEDGER_READ_SECONDS = 5.0  # machines by state and target: one query per this many seconds at most
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CYCLE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The server's Prometheus registry (its own, never the process-global one)."""

    def __init__(self, server: "Server") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        http = ["method", "route", "status"]
        self.requests = Counter(
            "deepops_http_requests", "Requests answered, by method, route template, status.", http, registry=r
        )
        self.latency = Histogram(
            "deepops_http_request_duration_seconds", "Time to answer a request.", http, buckets=HTTP_BUCKETS, registry=r
        )
        self.cycles = Counter(
            "deepops_reaper_cycles", "Cycles of the server's reaper loop, by result.", ["result"], registry=r
        )
        self.actions = Counter(
            "deepops_reaper_actions",
            "Reaper actions by kind, reason and outcome.",
            ["action", "reason", "outcome"],
            registry=r,
        )
        self.reaper_errors = Counter(
            "deepops_reaper_errors", "Errors inside reaper cycles (discovery, actions).", registry=r
        )
        self.cycle_time = Histogram(
            "deepops_reaper_cycle_duration_seconds", "Time a reaper cycle took.", buckets=CYCLE_BUCKETS, registry=r
        )
        self.last_cycle = Gauge("deepops_reaper_last_cycle_timestamp_seconds", "When the last cycle ended.", registry=r)
        r.register(_ReadAtScrape(server))
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        # The children of one label set are looked up once (labels() validates and locks each time):
        # this runs for every request. Routes are templates and methods a known few, so the keys stay few.
        series = self._series.get((method, route, status))
        if series is None:
            labels = (method if method in METHODS else "other", route, str(status))
            series = (self.requests.labels(*labels), self.latency.labels(*labels))
            if len(self._series) < 10_000:
                self._series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def reaper_cycle(self, report: Any) -> None:
        self.cycles.labels("ok" if not report.errors else "errors").inc()
        for action in report.actions:
            self.actions.labels(action.kind, action.reason, action.outcome).inc()
        if report.errors:
            self.reaper_errors.inc(len(report.errors))
        self.cycle_time.observe(report.duration_seconds)
        self.last_cycle.set_to_current_time()

    def reaper_failed(self) -> None:
        self.cycles.labels("failed").inc()
        self.last_cycle.set_to_current_time()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _ReadAtScrape:
    """What is read when scraped rather than counted: the ledger's machines, the worker pools'
    tasks in flight, the refusals edge.Refusals keeps."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self._lock = threading.Lock()
        self._read_at = -LEDGER_READ_SECONDS
        self._machines: list[tuple[str, str, int]] | None = None

    def machines(self) -> list[tuple[str, str, int]] | None:
        """(state, target, count) of the live machines; None when the ledger did not answer."""
        with self._lock:
            if time.monotonic() - self._read_at >= LEDGER_READ_SECONDS:
                self._machines = self._read()
                self._read_at = time.monotonic()
            return self._machines

    def _read(self) -> list[tuple[str, str, int]] | None:
        from sqlalchemy import func, select

        from deepops_infra.ledger.schema import Machine

        query = (
            select(Machine.status, Machine.cloud, func.count())
            .where(Machine.ended_at.is_(None))
            .group_by(Machine.status, Machine.cloud)
        )
        try:
            with self.server.ledger.read() as session:
                return [(status, cloud, int(n)) for status, cloud, n in session.execute(query)]
        except Exception:  # a scrape reports the ledger down, it does not fail
            return None

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows = self.machines()
        up = GaugeMetricFamily("deepops_ledger_up", "Whether the ledger answered the last read for /metrics.")
        up.add_metric([], 0 if rows is None else 1)
        yield up
        machines = GaugeMetricFamily(
            "deepops_machines", "Live machines in the ledger by lifecycle state and target.", labels=["state", "target"]
        )
        for status, cloud, n in rows or ():
            machines.add_metric([status, cloud], n)
        yield machines
        for name, pool in (("launches", self.server.workers), ("releases", self.server.releasers)):
            gauge = GaugeMetricFamily(f"deepops_{name}_in_flight", f"{name.capitalize()} queued or running in workers.")
            gauge.add_metric([], getattr(pool, "in_flight", 0))
            yield gauge
        refused = self.server.refusals.counts()
        for name, status, what in (
            ("token_refusals", 401, "Requests refused for a missing, unknown, expired or revoked token (401)."),
            ("rate_limit_refusals", 429, "Requests refused by the rate limits (429)."),
        ):
            counter = CounterMetricFamily(f"deepops_{name}", what)
            counter.add_metric([], refused.get(status, 0))
            yield counter


def readiness(server: "Server") -> tuple[bool, str]:
    """(ready, why): the ledger answers one query and its schema is at this server's head revision."""
    from deepops_infra.ledger import HEAD_REVISION
    from deepops_infra.ledger.db import current_revision

    try:
        revision = current_revision(server.ledger.engine)
    except Exception as exc:  # no address or password in the answer: the class says enough
        return False, f"the ledger does not answer ({type(exc).__name__})"
    if revision != HEAD_REVISION:
        return False, (
            f"the ledger's schema is at {revision or 'no revision'}, this server needs {HEAD_REVISION}: "
            "a newer server migrated it, or a migration is still to run (any deepops command against it runs it)"
        )
    return True, f"ledger reachable, schema at {HEAD_REVISION}"


def register_operations(app: FastAPI, server: "Server", who: Any, access: str) -> None:
    """GET /metrics (as `access` says) and GET /readyz; /healthz is in app.py."""
    from deepops_infra.server.problems import problem_response

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request) -> Response:
        ready, why = readiness(server)
        if not ready:
            return problem_response(503, why, request.url.path)
        return JSONResponse({"status": "ready", "detail": why})

    if access == "off":
        return

    def scrape() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    if access == "token":

        @app.get("/metrics", include_in_schema=False)
        def metrics_with_token(caller: who) -> Response:  # type: ignore[valid-type]
            return scrape()

    else:

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return scrape()
