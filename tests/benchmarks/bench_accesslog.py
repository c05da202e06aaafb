"""What the access log and the request metrics add to each request (server/accesslog.py).

A report, not a test: it prints microseconds per request for the two paths of AccessLog.record,
the metrics alone (--log-level warning) and the metrics with the log line written to a file
(info, the default), for a request the router matched and for one answered before routing (the
saved machine list, matched here again).

    .venv/bin/python tests/benchmarks/bench_accesslog.py [--requests 50000]
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from fastapi import FastAPI

    from deepops_infra.server.accesslog import AccessLog, configure
    from deepops_infra.server.edge import Refusals
    from deepops_infra.server.metrics import ServerMetrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    app = FastAPI()
    for i in range(40):  # about as many routes as the server has
        app.get(f"/api/v1/thing{i}/{{ref}}")(lambda ref: ref)
    app.get("/api/v1/machines")(lambda: [])
    server = SimpleNamespace(
        ledger=None, workers=None, releasers=None, refusals=Refusals(), cached_caller=lambda token: (True, None)
    )
    server.metrics = ServerMetrics(server)  # type: ignore[attr-defined]
    layer = AccessLog(None, server, lambda: app.router.routes)  # type: ignore[arg-type]
    caller = SimpleNamespace(name="alice")
    routed = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/thing3/m-1",
        "route": app.router.routes[-5],
        "client": ("10.0.0.7", 5000),
        "state": {"caller": caller},
        "headers": [],
    }
    unrouted = routed | {"path": "/api/v1/machines", "route": None, "root_path": "", "headers": []}
    unrouted.pop("route")
    log_file = Path(tempfile.mkdtemp()) / "access.log"
    for level in ("warning", "info"):
        configure(level)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.getLogger("deepops").handlers[0].formatter)
        logging.getLogger("deepops").handlers[:] = [handler]
        for name, scope in (("routed", routed), ("before routing", unrouted)):
            started = time.perf_counter()
            for _ in range(args.requests):
                layer.record(scope, 200, 0.002)
            per = (time.perf_counter() - started) / args.requests * 1e6
            print(f"--log-level {level:7} {name:15} {per:6.1f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
