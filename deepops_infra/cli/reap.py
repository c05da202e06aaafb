"""`deepops reap`: the idle-reaper, once (cron, CronJob) or as a daemon (systemd) with metrics."""

import sys
from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, settings


def _say(report) -> None:  # type: ignore[no-untyped-def]
    prefix = "would " if report.dry_run else ""
    for a in report.actions:
        target = a.machine_id or (a.resource.resource_id if a.resource else "?")
        done = "" if report.dry_run else f" [{a.outcome}{': ' + a.note if a.note else ''}]"
        until = f", ends at {a.deadline:%Y-%m-%d %H:%M:%S}Z" if a.kind == "warn" and a.deadline else ""
        info(f"{prefix}{a.kind} {target} ({a.reason}: {a.detail}{until}){done}")
    for w in report.waiting:
        info(f"waiting: {w['machine']}: {w['why']}")
    for e in report.errors:
        info(f"error: {e}")
    if not report.actions and not report.errors:
        states = ", ".join(f"{n} {s}" for s, n in sorted(report.machines_by_state.items())) or "no machines"
        info(f"nothing to do ({states})")


def reap(
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit (the default).")] = False,
    daemon: Annotated[bool, typer.Option("--daemon", help="Run a cycle every --interval until stopped.")] = False,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Between daemon cycles, e.g. 30s or 5m (default: reaper.interval).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the actions and reasons; do nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print each cycle's report as JSON.")] = False,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus metrics port of the daemon (0: off).")
    ] = None,
) -> None:
    """End what runs idle, past its TTL or half-made; remove orphans; close ghosts. Owners are warned first.

    Exit status: 0, or 1 when a cycle had errors or hit the cap on actions per cycle.
    """
    import json
    import signal
    import time

    from deepops_infra.durations import parse_duration
    from deepops_infra.errors import UserError

    if once and daemon:
        raise UserError("--once and --daemon exclude each other; pick one")
    if interval is not None and not daemon:
        raise UserError("--interval is for --daemon; --once runs a single cycle")
    if metrics_port is not None and not 0 <= metrics_port <= 65535:
        raise UserError(f"--metrics-port: {metrics_port} is not a port (1-65535, or 0 for off)")
    pause = parse_duration(interval, "--interval") if interval else None
    s = settings()
    from deepops_infra.reaper.cycle import Reaper
    from deepops_infra.reaper.metrics import Metrics
    from deepops_infra.reaper.settings import ReaperSettings

    rs = ReaperSettings.load(s)
    ledger = open_ledger(s)
    reaper = Reaper(s, ledger, reaper_settings=rs)

    def cycle() -> bool:
        try:
            report = reaper.run(dry_run=dry_run)
        except Exception as exc:  # the daemon outlives a bad cycle; --once reports it
            if not daemon:
                raise
            info(f"error: cycle failed: {type(exc).__name__}: {exc}")
            metrics.errors += 1
            return False
        metrics.record(report)
        info(report.summary())  # the line the server's reaper loop logs
        if json_out:
            sys.stdout.write(json.dumps(report.to_json(), default=str) + "\n")
            sys.stdout.flush()
        else:
            _say(report)
        return not report.errors

    metrics = Metrics()
    if not daemon:
        ok = cycle()
        raise typer.Exit(0 if ok else 1)
    stop = {"now": False}

    def on_signal(signum, frame) -> None:  # type: ignore[no-untyped-def]
        stop["now"] = True

    def own_signals() -> None:
        # ansible-runner installs its own SIGTERM/SIGINT handlers for each play and leaves them.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    own_signals()
    port = rs.metrics_port if metrics_port is None else metrics_port
    if port:
        try:
            metrics.serve(rs.metrics_address, port)
        except OSError as exc:
            raise UserError(f"--metrics-port {port}: cannot listen on {rs.metrics_address}: {exc.strerror}") from None
        info(f"metrics on http://{rs.metrics_address}:{port}/metrics")
    every = (pause or rs.interval).total_seconds()
    while not stop["now"]:
        started = time.monotonic()
        try:
            cycle()
        except KeyboardInterrupt:  # a stop signal that reached a play: the release resumes next cycle
            break
        own_signals()
        while not stop["now"] and time.monotonic() - started < every:
            time.sleep(0.2)
    if json_out:
        sys.stdout.write(json.dumps({"stopped": True}) + "\n")
    else:
        info("reaper stopped")
