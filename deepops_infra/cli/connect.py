"""Connect commands: ssh (shell, command, port forwards) and ssh-config, in local and team mode.

`deepops ssh ID -- CMD` is `ssh <options> deepops-ID CMD`: the user's own ssh client speaks SSH
end to end with the machine's per-lease sshd, reached through `deepops_infra.connect.proxy`
(locally or over the pool key in local mode; through the team server, which holds the pool keys,
in team mode). See docs/connecting.md.
"""

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepops_infra.cli.common import info

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.connect.target import Endpoint

# -L [BIND:]PORT:HOST:HOSTPORT, or PORT alone for PORT:localhost:PORT
_ADDRESS = r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:]+\])"
FORWARD = re.compile(rf"(?:(?P<bind>{_ADDRESS}):)?(?P<port>\d{{1,5}}):(?P<host>{_ADDRESS}):(?P<to>\d{{1,5}})")


@dataclass(frozen=True)
class Route:
    """The way to a machine: the DEEPOPS_HOME, the team server (None: local mode), its endpoint."""

    home: Path
    server: str | None
    endpoint: "Endpoint"


def forward_spec(text: str) -> str:
    """One -L value as ssh takes it; a UserError naming the form when it is not one."""
    if text.isdigit():
        text = f"{text}:localhost:{text}"
    match = FORWARD.fullmatch(text)
    if match is None or not all(0 < int(match[p]) < 65536 for p in ("port", "to")):
        from deepops_infra.errors import UserError

        raise UserError(f"-L {text!r}: give [BIND:]PORT:HOST:HOSTPORT with ports 1-65535, e.g. -L 8888:localhost:8888")
    return text


def remote_command(command: list[str]) -> str:
    """One word is a shell command line (`'a; b'`, as plain ssh runs it); several words are run as
    they are (each one quoted), like `docker exec`."""
    import shlex

    return command[0] if len(command) == 1 else shlex.join(command)


def route(ref: str) -> Route:
    """The machine `ref` names, in local or team mode; nothing is written before it is found."""
    from deepops_infra.client import server_url
    from deepops_infra.config import Settings
    from deepops_infra.connect import keys

    home, server = Settings.from_env().home, server_url()
    if server:
        from deepops_infra.connect import remote

        return Route(home, server, remote.endpoint(remote.client(), ref, home))
    from deepops_infra.connect.target import endpoint, find_machine, live

    settings = Settings.from_env()
    machine = live(find_machine(settings, ref))
    _, public = keys.user_key(home)
    return Route(home, None, endpoint(settings, machine, public))


def ssh_argv(to: Route, command: list[str] | None, forwards: list[str], no_command: bool, tty: bool) -> list[str]:
    from deepops_infra.connect import sshconfig

    argv = ["ssh", *sshconfig.ssh_args(to.home, to.server, to.endpoint)]
    if no_command:
        argv.append("-N")
    elif tty:
        argv.append("-t")
    for spec in forwards:
        argv += ["-L", spec]
    argv.append(to.endpoint.alias)
    if command and not no_command:
        argv.append(remote_command(command))
    return argv


def ssh(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Command to run (after --): one word is a shell line ('a; b'), several run as they are."),
    ] = None,
    forward: Annotated[
        list[str] | None,
        typer.Option("--forward", "-L", help="Forward a local port: [BIND:]PORT:HOST:HOSTPORT, or PORT (repeatable)."),
    ] = None,
    no_command: Annotated[bool, typer.Option("--no-command", "-N", help="Run nothing: only forward ports.")] = False,
) -> None:
    """Open a shell in the machine, or run `-- CMD` there and exit with its status; -L forwards ports."""
    from deepops_infra.errors import UserError

    forwards = [forward_spec(f) for f in forward or []]
    if no_command and command:
        raise UserError("-N runs no command: drop -N or the command")
    if no_command and not forwards:
        raise UserError("-N only forwards ports: add -L PORT (e.g. -L 8888:localhost:8888)")
    to = route(machine_ref)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = ssh_argv(to, command, forwards, no_command, tty)
    if forwards:
        info(f"forwarding {', '.join(forwards)} to {to.endpoint.id}" + (" (Ctrl-C ends it)" if no_command else ""))
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise UserError(f"cannot run ssh ({exc}): install the OpenSSH client") from None


def ssh_config(
    write: Annotated[
        bool, typer.Option("--write", help="Keep the hosts in $DEEPOPS_HOME/ssh/config, included from ~/.ssh/config.")
    ] = False,
) -> None:
    """OpenSSH `Host deepops-<id>` entries for your running machines, for ssh, scp, rsync and VS Code."""
    from deepops_infra.client import server_url
    from deepops_infra.config import Settings
    from deepops_infra.connect import keys, sshconfig

    home, server = Settings.from_env().home, server_url()
    if server:
        from deepops_infra.connect import remote

        endpoints = remote.endpoints(remote.client(), home)
    else:
        endpoints = _local_endpoints(Settings.from_env())
    text = sshconfig.host_blocks(home, server, endpoints)
    if not write:
        keys.user_key(home)  # what the hosts' IdentityFile names
        sys.stdout.write(text)
        return
    path = sshconfig.write(home, text)
    keys.forget_host_keys(home, {e.alias for e in endpoints})
    hosts = ", ".join(e.alias for e in endpoints) or "no machines running yet"
    info(f"wrote {path} (included from ~/.ssh/config): {hosts}; `ssh deepops-ID` works from any terminal or editor")


def _local_endpoints(settings: "Settings") -> "list[Endpoint]":
    """The endpoints of the running machines of the local ledger (those that take sessions)."""
    from deepops_infra.connect import keys
    from deepops_infra.connect.target import endpoint, find_machine
    from deepops_infra.errors import DeepopsError

    _, public = keys.user_key(settings.home)
    found = []
    for machine_id in _running_ids(settings):
        try:
            found.append(endpoint(settings, find_machine(settings, machine_id), public))
        except DeepopsError:
            continue  # not running yet: nothing to connect to
    return found


def _running_ids(settings: "Settings") -> list[str]:
    from datetime import UTC, datetime

    from deepops_infra.ledger import quickread

    url = settings.ledger_url
    if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
        return []
    rows: Any = quickread.list_machines(url, False, None, datetime.now(UTC))
    if rows is None:  # a ledger the quick path cannot read
        from deepops_infra.cli.common import open_ledger
        from deepops_infra.ledger import store

        with open_ledger(settings, create=False).read() as session:
            return [m.id for m in store.list_machines(session)]
    return [m.id for m, _ in rows]


def ssh_proxy(machine_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """ProxyCommand of the ssh-config hosts (carries one session; not for typing)."""
    from deepops_infra.client import server_url
    from deepops_infra.config import Settings
    from deepops_infra.connect import proxy

    server = server_url()
    mode = ["--server", server] if server else ["--local"]
    raise typer.Exit(proxy.main(["--home", str(Settings.from_env().home), *mode, machine_id]))


def run_remote(machine_id: str, argv: list[str]) -> int:
    """Run `argv` in a machine through a session (team mode's `deepops run`); its exit status."""
    import subprocess

    tty = sys.stdin.isatty() and sys.stdout.isatty()
    return subprocess.run(ssh_argv(route(machine_id), argv, [], False, tty), check=False).returncode


def register(app: typer.Typer) -> None:
    app.command()(ssh)
    app.command(name="ssh-config")(ssh_config)
    app.command(name="ssh-proxy", hidden=True)(ssh_proxy)
