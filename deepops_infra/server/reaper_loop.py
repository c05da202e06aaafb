"""The reaper loop inside `deepops serve`. The reaper takes its per-machine lock (PostgreSQL
advisory lock, or flock beside the SQLite ledger) before acting, so this loop and a separate
`deepops reap --daemon` may both run: for any machine only one of them acts. Each cycle logs its
summary line (Report.summary, as `deepops reap` prints it) and counts into /metrics."""

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepops_infra.server.app import Server

log = logging.getLogger("deepops.server.reaper")


def run_reaper_loop(server: "Server") -> None:
    from deepops_infra.reaper.cycle import Reaper
    from deepops_infra.reaper.settings import ReaperSettings

    reaper = Reaper(server.settings, server.ledger, reaper_settings=ReaperSettings.load(server.settings))
    every = server.config.reaper_interval.total_seconds()
    while not server.stop.is_set():
        try:
            report = reaper.run(dry_run=False)
            for action in report.actions:
                log.info("reaper: %s %s (%s) [%s]", action.kind, action.machine_id, action.reason, action.outcome)
            for error in report.errors:
                log.warning("reaper: %s", error)
            log.info("%s", report.summary())
            server.metrics.reaper_cycle(report)
        except Exception as exc:  # the server outlives a bad cycle
            log.warning("reaper: cycle failed: %s: %s", type(exc).__name__, exc)
            server.metrics.reaper_failed()
        server.stop.wait(every)
