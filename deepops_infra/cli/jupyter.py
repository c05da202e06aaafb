"""Jupyter: `deepops up --jupyter` and `deepops jupyter ID [--stop]`.

A Jupyter server runs in the machine from the image's pinned environment (images with
`jupyter: true`, e.g. cpu-jupyter); a detached port forward on this computer makes it
`http://127.0.0.1:PORT/?token=...`. Both go the way `deepops ssh` goes, so they work alike in
local and team mode. See deepops_infra/jupyter.py and docs/connecting.md.
"""

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepops_infra.cli.common import info, print_json

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from deepops_infra.jupyter import Forward, Server

JupyterOpt = Annotated[
    bool,
    typer.Option(
        "--jupyter",
        help="Start Jupyter in the machine (its image must have it: cpu-jupyter) and print a local URL with its token.",
    ),
]
READY_SECONDS = 120.0  # a loaded host starts ssh, its proxy and the server slowly


@dataclass(frozen=True)
class Opened:
    machine: str
    url: str
    local_port: int
    remote_port: int
    forward_pid: int

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "forward_pid": self.forward_pid,
        }


def _refuse_image(name: str) -> None:
    from deepops_infra.errors import UserError
    from deepops_infra.images import get_image, load_images

    if not get_image(name).jupyter:
        having = ", ".join(sorted(n for n, i in load_images().items() if i.jupyter)) or "none yet"
        raise UserError(
            f"--jupyter: image {name} has no Jupyter; use --image with one that has (images with Jupyter: {having})"
        )


def check_image(order: Any) -> None:
    """`up --jupyter`: refused (exit 2) before anything is requested or written when the image the
    machine will have has no Jupyter."""
    name = order.image
    if name is None and order.like:  # the earlier machine's image
        from deepops_infra.cli.machines import _service, _team
        from deepops_infra.errors import NotFoundError

        try:
            name = (_team() or _service()).show(order.like).image
        except NotFoundError:
            return  # an ended machine of that name: the plan finds it; no Jupyter shows once ready
    if name is None:
        from deepops_infra.cli.common import settings

        name = settings().config.defaults.image
    _refuse_image(name)


def _home() -> "Path":
    from deepops_infra.cli.common import settings

    return settings().home


def _start_server(machine_id: str) -> "Server":
    from deepops_infra import jupyter
    from deepops_infra.cli.work import run_in
    from deepops_infra.errors import OperationError, UserError
    from deepops_infra.jobs import new_job_id

    proc = run_in(machine_id, jupyter.ensure_command(new_job_id()), capture=True)
    why = " ".join(proc.stderr.split())[:300]
    if proc.returncode == jupyter.NO_JUPYTER:
        raise UserError(f"{why}: give the machine an image with Jupyter (e.g. --image cpu-jupyter)")
    server = jupyter.parse_server(proc.stdout) if proc.returncode == 0 else None
    if server is None:
        raise OperationError(f"Jupyter did not start in {machine_id} (exit {proc.returncode}): {why or 'no output'}")
    return server


def _answers(port: int, token: str, timeout: float = 5) -> bool:
    """GET /api/status with the token answers 200 on the local port."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _spawn(machine_id: str, home: "Path", local: int, remote: int) -> "subprocess.Popen[bytes]":
    """A detached `ssh -N -L local:127.0.0.1:remote` (the `deepops ssh` path), in a session of its
    own, its errors in $DEEPOPS_HOME/jupyter/<machine>.log."""
    import os
    import subprocess

    from deepops_infra.cli.connect import ssh_argv
    from deepops_infra.cli.work import route
    from deepops_infra.jupyter import forwards_dir

    argv = ssh_argv(route(machine_id), None, [f"{local}:127.0.0.1:{remote}"], True, False)
    argv[1:1] = ["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=30"]
    forwards_dir(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    log = os.open(forwards_dir(home) / f"{machine_id}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    finally:
        os.close(log)


def _forward(machine_id: str, home: "Path", server: "Server") -> "Forward":
    """Start the forward and wait until the server answers through it (a local port taken in the
    meantime: another one)."""
    import time

    from deepops_infra import jupyter
    from deepops_infra.errors import OperationError

    for _ in range(3):
        local = jupyter.free_local_port()
        proc = _spawn(machine_id, home, local, server.port)
        forward = jupyter.Forward(machine_id, proc.pid, local, server.port)
        jupyter.save(home, forward)
        deadline = time.monotonic() + READY_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(local, server.token):
                return forward
            time.sleep(0.3)
        if proc.poll() is None:
            jupyter.stop(home, machine_id)
            raise OperationError(f"Jupyter in {machine_id} did not answer on 127.0.0.1:{local} in {READY_SECONDS:.0f}s")
        log = (jupyter.forwards_dir(home) / f"{machine_id}.log").read_text(errors="replace")
        jupyter.record_path(home, machine_id).unlink(missing_ok=True)
        if "forwarding" not in log.lower() and "address already in use" not in log.lower():
            break
    raise OperationError(f"the port forward to {machine_id} ended: {' '.join(log.split())[:300] or 'no output'}")


def open_jupyter(machine_id: str) -> Opened:
    """Jupyter in a ready machine (the running server, else a new one) and a local forward to it
    (the recorded one while it still answers, else a new one)."""
    from deepops_infra import jupyter

    server = _start_server(machine_id)
    home = _home()
    forward = jupyter.load(home, machine_id)
    reuse = (
        forward is not None
        and forward.remote_port == server.port
        and jupyter.is_ours(forward)
        and _answers(forward.local_port, server.token)
    )
    if not reuse:
        jupyter.stop(home, machine_id)
        forward = _forward(machine_id, home, server)
    assert forward is not None
    return Opened(machine_id, forward.url(server.token), forward.local_port, server.port, forward.pid)


def stop_forward(machine_id: str) -> None:
    """End the machine's local forward, if one runs (`deepops down` calls this)."""
    from deepops_infra.jupyter import stop

    if stop(_home(), machine_id):
        info(f"stopped the Jupyter forward of {machine_id}")


def say_opened(opened: Opened) -> None:
    info(f"Jupyter in {opened.machine}, forwarded from 127.0.0.1:{opened.local_port} (`deepops down` ends both):")
    sys.stdout.write(opened.url + "\n")
    sys.stdout.flush()


def jupyter(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    stop: Annotated[
        bool, typer.Option("--stop", help="End the local port forward (the server runs on until `deepops down`).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a local URL (with its token) of Jupyter in a running machine, starting the server and
    the port forward when they are not running."""
    from deepops_infra import jupyter as forwards
    from deepops_infra.cli.machines import _service, _team

    m = (_team() or _service()).show(machine_ref)
    if stop:
        stopped = forwards.stop(_home(), m.id)
        info(f"stopped the Jupyter forward of {m.id}" if stopped else f"no Jupyter forward of {m.id} is running")
        return
    _refuse_image(m.image)
    opened = open_jupyter(m.id)
    if json_out:
        print_json({"machine": m.id, **opened.to_json()})
    else:
        say_opened(opened)


def register(app: typer.Typer) -> None:
    app.command()(jupyter)
