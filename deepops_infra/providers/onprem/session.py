"""Sessions into an on-prem lease: the argv that starts the lease's `sshd -i` on its pool host
(a local process, or over the pool key's ssh). Kept apart from provider.py, and light, so that
`deepops ssh` reaches a lease without loading the provider's SQLAlchemy and Ansible imports."""

import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.connect import lease
from deepops_infra.errors import UserError
from deepops_infra.pool import PoolHost
from deepops_infra.providers.base import SessionCommand

if TYPE_CHECKING:
    from deepops_infra.config import Settings


def pool_ssh(home: Path, host: PoolHost) -> list[str]:
    """ssh to a pool host with the pool's key, its host key remembered in $DEEPOPS_HOME/known_hosts."""
    argv = [
        "ssh",
        "-p",
        str(host.port),
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={home / 'known_hosts'}",
        "-o",
        "BatchMode=yes",
    ]
    if host.key:
        argv += ["-i", str(Path(host.key).expanduser())]
    return argv


def unix_user() -> str:
    """Who this process runs as (what ssh logs in as by default; $USER may say otherwise)."""
    return pwd.getpwuid(os.getuid()).pw_name


def session_command(settings: "Settings", host: PoolHost, machine: Any, public_key: str) -> SessionCommand:
    """The lease's sshd on `host` for `machine`, letting in `public_key` for this session. Over
    ssh, the connection to the host is the one the lease's steps keep for a minute (one
    handshake saved per session while it lasts)."""
    workspace = (machine.provider_refs or {}).get("workspace")
    if not workspace or machine.ended_at is not None:
        raise UserError(f"{machine.id} is {machine.status}: only a running machine takes sessions")
    try:
        argv = lease.script_argv(workspace, public_key)
    except ValueError as exc:
        raise UserError(f"{machine.id}: {exc}") from None
    if host.connection == "local":
        return SessionCommand(argv, unix_user())
    target = f"{host.user}@{host.address}" if host.user else host.address
    from deepops_infra.providers.onprem.hostcall import reuse

    ssh = [*pool_ssh(settings.home, host), *reuse(settings), "-T", "-o", "ConnectTimeout=10"]
    ssh += ["-o", "ServerAliveInterval=30"]
    return SessionCommand([*ssh, target, lease.remote_command(argv)], host.user or unix_user())
