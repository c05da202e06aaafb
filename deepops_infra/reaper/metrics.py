"""Prometheus metrics of `deepops reap --daemon`, in the text exposition format (no dependency):
machines by state, actions by reason and outcome, cycle duration, errors, cap hits."""

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.machines: dict[str, int] = {}
        self.actions: Counter[tuple[str, str, str]] = Counter()
        self.errors = 0
        self.cap_hits = 0
        self.cycles = 0
        self.duration_sum = 0.0
        self.last_duration = 0.0
        self.last_cycle_at = 0.0

    def record(self, report: Any) -> None:
        with self.lock:
            self.machines = dict(report.machines_by_state)
            for action in report.actions:
                self.actions[(action.kind, action.reason, action.outcome)] += 1
            self.errors += len(report.errors)
            self.cap_hits += 1 if report.capped else 0
            self.cycles += 1
            self.duration_sum += report.duration_seconds
            self.last_duration = report.duration_seconds
            self.last_cycle_at = report.started_at.timestamp()

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP deepops_machines Live machines in the ledger by lifecycle state.",
                "# TYPE deepops_machines gauge",
            ]
            lines += [f"deepops_machines{_labels(state=s)} {n}" for s, n in sorted(self.machines.items())]
            lines += [
                "# HELP deepops_reaper_actions_total Reaper actions by kind, reason and outcome.",
                "# TYPE deepops_reaper_actions_total counter",
            ]
            lines += [
                f"deepops_reaper_actions_total{_labels(action=k, reason=r, outcome=o)} {n}"
                for (k, r, o), n in sorted(self.actions.items())
            ]
            lines += [
                "# HELP deepops_reaper_cycle_duration_seconds Time a reaper cycle took.",
                "# TYPE deepops_reaper_cycle_duration_seconds summary",
                f"deepops_reaper_cycle_duration_seconds_sum {self.duration_sum:.6f}",
                f"deepops_reaper_cycle_duration_seconds_count {self.cycles}",
                "# HELP deepops_reaper_last_cycle_duration_seconds Time the last cycle took.",
                "# TYPE deepops_reaper_last_cycle_duration_seconds gauge",
                f"deepops_reaper_last_cycle_duration_seconds {self.last_duration:.6f}",
                "# HELP deepops_reaper_last_cycle_timestamp_seconds When the last cycle started (Unix time).",
                "# TYPE deepops_reaper_last_cycle_timestamp_seconds gauge",
                f"deepops_reaper_last_cycle_timestamp_seconds {self.last_cycle_at:.3f}",
                "# HELP deepops_reaper_errors_total Errors in reaper cycles (discovery, actions).",
                "# TYPE deepops_reaper_errors_total counter",
                f"deepops_reaper_errors_total {self.errors}",
                "# HELP deepops_reaper_cap_hits_total Cycles stopped by the cap on actions per cycle.",
                "# TYPE deepops_reaper_cap_hits_total counter",
                f"deepops_reaper_cap_hits_total {self.cap_hits}",
            ]
            return "\n".join(lines) + "\n"

    def serve(self, address: str, port: int) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=server.serve_forever, name="reaper-metrics", daemon=True).start()
        return server
