"""The CLI as a client of the team server: with DEEPOPS_SERVER set, every command goes to the
server (token from DEEPOPS_TOKEN or `deepops login`): `Remote` has the machines service's
operations over HTTP with the same typed answers, so a command prints the same in both modes.

Only the standard library is used here, so the CLI needs nothing more to talk to a server.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import NotFoundError, OperationError, UserError

if TYPE_CHECKING:
    from deepops_infra.views import MachineView

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
DETECT_TIMEOUT_SECONDS = 300  # adding a pool host: the server detects its GPUs over SSH first


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


# -- the machines service's operations, over HTTP (team mode) ------------------------------------


def team_mode() -> bool:
    """Whether the CLI works through a team server (DEEPOPS_SERVER set)."""
    return server_url() is not None


def team() -> "Remote | None":
    """The server's operations in team mode, else None (local mode: the service in-process)."""
    return Remote.from_env() if team_mode() else None


def _info(message: str) -> None:
    sys.stderr.write(message + "\n")


def _ref(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


class Remote:
    """The operations of the machines service (deepops_infra/service) through the team server,
    with the same typed answers, so that each command renders both modes with one code path."""

    POLL_SECONDS = 1.0

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def from_env(cls) -> "Remote":
        return cls(Client.from_env())

    # machines
    def request(self, order: Any, keep_on_failure: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """POST /machines: planned and recorded by the server (202), or only planned (dry run)."""
        from dataclasses import asdict

        body = asdict(order) | {"keep_on_failure": keep_on_failure or None, "dry_run": dry_run}
        return self.client.call("POST", "/machines", {k: v for k, v in body.items() if v is not None})  # type: ignore[no-any-return]

    def wait_ready(self, machine_id: str, seen: str, say: Any = _info) -> "MachineView":
        """Follow a launch the server runs until the machine is ready (OperationError when it failed)."""
        while True:
            m = self.show(machine_id)
            if m.status != seen:
                seen = m.status
                say(f"  {machine_id} {seen}" + (f": {m.status_reason}" if m.status_reason else ""))
            if m.status in TERMINAL or m.ended_at is not None:
                break
            time.sleep(self.POLL_SECONDS)
        if m.status != "ready":
            raise OperationError(f"{machine_id} failed: {m.status_reason}")
        return m

    def list_machines(self, include_ended: bool = False, owner: str | None = None) -> "list[MachineView]":
        from deepops_infra.views import MachineView

        rows = self.client.call("GET", "/machines", params={"all": include_ended, "owner": owner})
        return [MachineView.from_json(r) for r in rows]

    def show(self, ref: str) -> "MachineView":
        from deepops_infra.views import MachineView

        return MachineView.from_json(self.client.call("GET", f"/machines/{_ref(ref)}"))

    get_machine = show  # what `deepops ssh` and friends look a machine up with

    def extend(self, ref: str, ttl: str) -> "MachineView":
        from deepops_infra.views import MachineView

        return MachineView.from_json(self.client.call("POST", f"/machines/{_ref(ref)}/extend", {"ttl": ttl}))

    def releasable(self, refs: list[str]) -> list[Any]:
        from deepops_infra.service.machines import Target

        machines = [self.client.call("GET", f"/machines/{_ref(ref)}") for ref in refs]
        for m in machines:
            if m.get("ended_at"):
                raise UserError(f"{m['id']} already ended ({m['status']})")
        return [Target(m["id"], m["status"]) for m in machines]

    def release(self, machine_id: str) -> Any:
        """DELETE /machines/{id}: answered once the machine is confirmed gone."""
        from deepops_infra.service.machines import Released

        ended = self.client.call("DELETE", f"/machines/{_ref(machine_id)}", timeout=RELEASE_TIMEOUT_SECONDS)
        return Released(ended["machine"], ended["cost_line"])

    # pool (it-admin)
    def pool_ls(self, detect: bool = False) -> list[dict[str, Any]]:
        return self.client.call("GET", "/pool", params={"detect": detect or None})  # type: ignore[no-any-return]

    def pool_add(self, entry: dict[str, Any], detect: bool) -> dict[str, Any]:
        return self.client.call("POST", "/pool/hosts", entry | {"detect": detect}, timeout=DETECT_TIMEOUT_SECONDS)  # type: ignore[no-any-return]

    def pool_rm(self, name: str, force: bool = False) -> dict[str, Any]:
        return self.client.call("DELETE", f"/pool/hosts/{_ref(name)}", params={"force": force or None})  # type: ignore[no-any-return]

    # offers (member, team-admin, it-admin)
    def offers(self) -> list[Any]:
        """The server's cloud catalog (GET /offers), as `deepops gpus` reads the local one."""
        from decimal import Decimal

        from deepops_infra.catalog import Offering

        def price(value: Any) -> Decimal | None:
            return None if value in (None, "") else Decimal(str(value))

        return [
            Offering(
                cloud=o["cloud"],
                region=o["region"],
                instance_type=o["instance_type"],
                accelerator=o["accelerator"],
                accelerator_count=int(o["accelerator_count"]),
                vcpus=int(o["vcpus"]),
                memory_gib=Decimal(str(o["memory_gib"])),
                price_per_hour=price(o["price_per_hour"]),
                spot_price_per_hour=price(o["spot_price_per_hour"]),
            )
            for o in self.client.call("GET", "/offers")["cloud"]
        ]

    # budgets (finance, team-admin, it-admin)
    def budgets(self, month: str | None) -> Any:
        from deepops_infra.service.budgets import BudgetReport

        return BudgetReport.from_json(self.client.call("GET", "/budgets", params={"month": month}))


def down(refs: list[str], yes: bool, json_out: bool) -> None:
    """`deepops down` through the team server (the command's own code, with this client)."""
    from deepops_infra.cli.machines import release_machines

    remote = Remote.from_env()
    release_machines(remote.releasable, remote.release, refs, yes, json_out)


def cost(
    by: list[str] | None,
    month: str | None,
    since: str | None,
    until: str | None,
    fmt: str,
    output: Path | None,
    idle: str = "separate",
) -> None:
    from deepops_infra.cli.common import print_table

    params = {"by": by, "month": month, "since": since, "until": until, "format": fmt, "idle": idle}
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
