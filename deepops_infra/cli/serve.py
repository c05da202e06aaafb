"""`deepops serve`: the team server (API, web page and optionally the reaper loop) in one process."""

from typing import Annotated

import typer

from deepops_infra.cli.common import info


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (put TLS in front when not loopback).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    reaper: Annotated[
        bool, typer.Option("--reaper/--no-reaper", help="Run the reaper loop in the server (safe beside another).")
    ] = True,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info or debug (info: a line per request).")
    ] = "info",
    metrics: Annotated[
        str, typer.Option("--metrics", help="Who may read GET /metrics: public, token (any valid token) or off.")
    ] = "public",
) -> None:
    """Serve the API (OpenAPI at /docs and /openapi.json) and the web page for the team."""
    from deepops_infra.errors import UserError

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: use a port from 1 to 65535")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise UserError(f"--log-level {log_level!r}: use critical, error, warning, info or debug")
    if metrics not in ("public", "token", "off"):
        raise UserError(f"--metrics {metrics!r}: use public, token or off")
    try:
        import uvicorn

        from deepops_infra.server.app import create_app
    except ModuleNotFoundError as exc:
        raise UserError(f"the server needs {exc.name}: pip install 'deepops-infra[server]'") from None
    from deepops_infra.cli.common import settings
    from deepops_infra.server.accesslog import configure

    configure(log_level)  # the access log and the reaper loop's lines (deepops.* loggers)
    app = create_app(settings(), reaper=reaper, metrics=metrics)
    info(f"deepops server on http://{host}:{port}/ (reaper loop {'on' if reaper else 'off'})")
    # proxy_headers off: uvicorn would believe X-Forwarded-For from any local process; the app
    # believes it from server.trusted_proxies only (deepops_infra.server.edge).
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # deepops.access logs every request, with its route, user and client
        timeout_keep_alive=30,
        proxy_headers=False,
    )
