"""The CLI as a client of the team server: with DEEPOPS_SERVER set, up/ls/show/extend/down/cost
go to the server (token from DEEPOPS_TOKEN or `deepops login`) and print what they print locally.

Only the standard library is used here, so the CLI needs nothing more to talk to a server.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from deepops_infra.errors import NotFoundError, OperationError, UserError

CREDENTIALS = "credentials.json"
TERMINAL = ("ready", "failed", "terminated")


def _home() -> Path:
    return Path(os.path.expanduser(os.environ.get("DEEPOPS_HOME") or "~/.deepops")).absolute()


def saved_credentials() -> dict[str, str]:
    path = _home() / CREDENTIALS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_credentials(server: str, token: str) -> Path:
    from deepops_infra.paths import private_dir

    home = private_dir(_home())  # 0700 whoever created it
    path = home / CREDENTIALS
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server, "token": token}, f)
    os.replace(path.with_suffix(".tmp"), path)
    os.chmod(path, 0o600)
    return path


def server_url() -> str | None:
    """The server the CLI talks to: DEEPOPS_SERVER; nothing set means local mode."""
    url = os.environ.get("DEEPOPS_SERVER", "").strip()
    return url.rstrip("/") or None


# A release answers once the machine is confirmed gone: a cloud teardown, or a launch in flight
# stopping first (lifecycle.CANCEL_WAIT_SECONDS), takes minutes, far past an ordinary call's timeout.
RELEASE_TIMEOUT_SECONDS = 3600


class Client:
    def __init__(self, base: str, token: str | None, timeout: float = 60) -> None:
        if not base.startswith(("http://", "https://")):
            raise UserError(f"DEEPOPS_SERVER {base!r}: give a URL, e.g. http://deepops.example:8765")
        self.base, self.token, self.timeout = base.rstrip("/"), token, timeout

    @classmethod
    def from_env(cls) -> "Client":
        base = server_url()
        assert base
        saved = saved_credentials()
        token = os.environ.get("DEEPOPS_TOKEN") or (saved.get("token") if saved.get("server") == base else None)
        if not token:
            raise UserError(f"no token for {base}: run `deepops login --server {base}` or set DEEPOPS_TOKEN")
        return cls(base, token)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call; `timeout` (seconds) overrides the client's for calls that wait on work."""
        url = self.base + "/api/v1" + path
        if params:
            pairs = [
                (k, v)
                for k, val in params.items()
                if val is not None
                for v in (val if isinstance(val, list) else [val])
            ]
            url += "?" + urllib.parse.urlencode([(k, str(v).lower() if isinstance(v, bool) else v) for k, v in pairs])
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
                kind = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OperationError(f"cannot reach the server at {self.base}: {reason}") from None
        return json.loads(raw) if "json" in kind else raw.decode()


def _error(exc: urllib.error.HTTPError) -> Exception:
    try:
        problem = json.loads(exc.read())
        detail = problem.get("detail") or problem.get("title") or str(exc)
    except ValueError:
        detail = f"HTTP {exc.code}"
    if exc.code == 404:
        return NotFoundError(detail)
    if exc.code < 500:
        return UserError(f"server refused ({exc.code}): {detail}")
    return OperationError(f"server failed ({exc.code}): {detail}")


# -- the commands -------------------------------------------------------------------------------


def _info(message: str) -> None:
    sys.stderr.write(message + "\n")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _machine(data: dict[str, Any]) -> SimpleNamespace:
    """A machine from its JSON, with the attributes the table views read."""
    fields = dict(data) | {
        "request": {"gpus": data.get("gpus")},
        "plan": {"gpu_indexes": data.get("gpu_indexes")},
        "price_per_hour": Decimal(data["price_per_hour"]),
    }
    for key in ("created_at", "ready_at", "expires_at", "ended_at"):
        fields[key] = _when(data.get(key))
    return SimpleNamespace(**fields)


def up(body: dict[str, Any], like: str | None, keep_on_failure: bool, json_out: bool, dry_run: bool) -> None:
    client, poll = Client.from_env(), 1.0
    extra = {"like": like, "keep_on_failure": keep_on_failure or None, "dry_run": dry_run}
    created = client.call("POST", "/machines", {k: v for k, v in (body | extra).items() if v is not None})
    if dry_run:
        plan = created["plan"]
        if json_out:
            _print_json(plan)
        else:
            _info(
                f"would lease {body.get('gpus') or '0'} on {plan['host'] or plan['region']} with "
                f"{created['image']} ({plan['image_id']}) at ${plan['price_per_hour']}/h, "
                f"about ${plan['estimated_cost']} for the TTL"
            )
        return
    mid = created["id"]
    _info(f"{mid} requested on {created['host'] or created['region']}; the server is provisioning it")
    seen = created["status"]
    while True:
        m = client.call("GET", f"/machines/{mid}")
        if m["status"] != seen:
            seen = m["status"]
            _info(f"  {mid} {seen}" + (f": {m['status_reason']}" if m.get("status_reason") else ""))
        if m["status"] in TERMINAL or m.get("ended_at"):
            break
        time.sleep(poll)
    if m["status"] != "ready":
        raise OperationError(f"{mid} failed: {m.get('status_reason')}")
    keys = [k for k in m if k not in ("request", "plan", "price", "provider_refs", "manifest", "validation", "events")]
    if json_out:
        _print_json({k: m[k] for k in keys})
    else:
        expires = _when(m["expires_at"])
        _info(
            f"{mid} is ready on {m['host'] or m['region']}: `deepops ssh {mid}`, "
            f"ends at {expires:%Y-%m-%d %H:%M}Z, ${m['price_per_hour']}/h"
        )


def ls(all_: bool, owner: str | None, json_out: bool) -> None:
    from deepops_infra.cli.common import print_table
    from deepops_infra.views import MACHINE_COLUMNS, machine_row

    rows = Client.from_env().call("GET", "/machines", params={"all": all_, "owner": owner})
    if json_out:
        _print_json(rows)
    elif not rows:
        _info("no machines" + ("" if all_ else " running; `deepops ls --all` shows ended ones"))
    else:
        at = datetime.now(UTC)
        print_table(MACHINE_COLUMNS, [machine_row(_machine(r), Decimal(r["cost_usd"]), at) for r in rows])  # type: ignore[arg-type]


def show(ref: str, json_out: bool) -> None:
    data = Client.from_env().call("GET", f"/machines/{urllib.parse.quote(ref, safe='')}")
    if json_out:
        _print_json(data)
        return
    from rich.console import Console

    console = Console(highlight=False)
    manifest = data.get("manifest") or {}
    packages = manifest.get("packages") or {}
    reason = f" ({data['status_reason']})" if data.get("status_reason") else ""
    console.print(f"[bold]{data['id']}[/] {data.get('name') or ''}  {data['status']}" + reason)
    rows = [
        ("owner/team/project", f"{data['owner']} / {data['team']} / {data['project']}"),
        ("target", f"{data['cloud']} {data.get('host') or data.get('region') or ''}"),
        ("gpus", f"{data['request'].get('gpus')} indexes {data['plan'].get('gpu_indexes')}"),
        ("image", f"{data['image']} pinned {data['image_pin']}"),
        ("price (frozen)", f"${data.get('price_per_hour_stored', data['price_per_hour'])}/h {data['price']}"),
        ("cost so far", f"${data['cost_usd']}"),
        ("created / ready", f"{data['created_at']} / {data['ready_at']}"),
        ("expires / ended", f"{data['expires_at']} / {data['ended_at']}"),
        ("workspace", str((data.get("provider_refs") or {}).get("workspace"))),
        ("driver", str(manifest.get("driver_version"))),
        ("python", str(manifest.get("python"))),
        ("packages", ", ".join(f"{k}=={v}" for k, v in packages.items()) or "-"),
    ]
    for key, value in rows:
        console.print(f"  {key:<20} {value}")
    for check in (data.get("validation") or {}).get("checks", []):
        console.print(f"  check {'✓' if check['passed'] else '✗'} {check['name']}: {check['detail']}")
    console.print("  events:")
    for e in data["events"]:
        console.print(f"    {e['at']}  {e['kind']:<16} {e['from'] or ''} -> {e['to'] or ''}  {e['reason'] or ''}")


def extend(ref: str, ttl: str, json_out: bool) -> None:
    m = Client.from_env().call("POST", f"/machines/{urllib.parse.quote(ref, safe='')}/extend", {"ttl": ttl})
    if json_out:
        _print_json(m)
    else:
        _info(f"{m['id']} now ends at {_when(m['expires_at']):%Y-%m-%d %H:%M}Z")


def down(refs: list[str], yes: bool, json_out: bool) -> None:
    client = Client.from_env()
    machines = [client.call("GET", f"/machines/{urllib.parse.quote(ref, safe='')}") for ref in refs]
    for m in machines:
        if m.get("ended_at"):
            raise UserError(f"{m['id']} already ended ({m['status']})")
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("down needs --yes when not run from a terminal")
        import typer

        typer.confirm(f"Release {', '.join(m['id'] for m in machines)}?", abort=True)
    results, failures = [], []
    for m in machines:
        try:
            ended = client.call("DELETE", f"/machines/{m['id']}", timeout=RELEASE_TIMEOUT_SECONDS)
        except (UserError, OperationError) as exc:
            failures.append(f"{m['id']}: {exc}")
            continue
        results.append(ended["machine"])
        if not json_out:
            _info(ended["cost_line"])
    if json_out:
        _print_json(results)
    if failures:
        raise OperationError("; ".join(failures))


def cost(
    by: list[str] | None, month: str | None, since: str | None, until: str | None, fmt: str, output: Path | None
) -> None:
    from deepops_infra.cli.common import print_table

    params = {"by": by, "month": month, "since": since, "until": until, "format": fmt}
    result = Client.from_env().call("GET", "/costs", params=params)
    if fmt == "json":
        text = json.dumps(result, indent=2) + "\n"
    elif fmt in ("csv", "html"):
        text = result
    else:
        if output is None:
            print_table(result["columns"], result["rows"], title=result["title"])
            return
        import io

        from rich.console import Console
        from rich.table import Table

        buf = io.StringIO()
        table = Table(title=result["title"], box=None, header_style="bold", pad_edge=False)
        for column in result["columns"]:
            table.add_column(column, no_wrap=True)
        for row in result["rows"]:
            table.add_row(*row)
        Console(file=buf, width=250, color_system=None).print(table)
        text = buf.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        _info(f"wrote {output}")
