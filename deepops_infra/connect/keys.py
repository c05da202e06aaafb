"""The user's deepops key pair and the host keys of leases, under `$DEEPOPS_HOME/ssh` (0700).

`id_ed25519` (0600) is the key the user's ssh client offers to a lease's sshd; in team mode its
public half is registered with the server. `known_hosts` holds one line per machine under the
alias `deepops-<id>`, written by the proxy from the header of each session, which arrives over
a channel already authenticated (the pool key, or the server with the user's token): the client
pins the lease's key without ever asking (StrictHostKeyChecking yes).
"""

import base64
import fcntl
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from deepops_infra.errors import OperationError

KEY_NAME = "id_ed25519"


def ssh_dir(home: Path, create: bool = True) -> Path:
    path = home / "ssh"
    if create:
        from deepops_infra.paths import private_dir

        private_dir(path)
    return path


def alias(machine_id: str) -> str:
    return f"deepops-{machine_id}"


def user_key(home: Path) -> tuple[Path, str]:
    """(private key path, public key line) of the user's deepops key, made on first use."""
    folder = ssh_dir(home)
    private = folder / KEY_NAME
    if not private.exists():
        tmp = folder / f".{KEY_NAME}.{os.getpid()}"
        tmp_public = folder / f".{KEY_NAME}.{os.getpid()}.pub"
        for leftover in (tmp, tmp_public):
            leftover.unlink(missing_ok=True)
        comment = f"deepops@{os.uname().nodename}"
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp)],
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise OperationError(f"cannot make the deepops ssh key (is ssh-keygen installed?): {exc}") from None
        os.replace(tmp_public, folder / f"{KEY_NAME}.pub")
        os.replace(tmp, private)  # last: a private key without its public half is never seen
    for path in (private, folder / f"{KEY_NAME}.pub"):
        os.chmod(path, 0o600)
    public = (folder / f"{KEY_NAME}.pub").read_text().split()
    return private, " ".join(public[:2])


def fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (`SHA256:...`)."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def known_hosts(home: Path) -> Path:
    return ssh_dir(home, create=False) / "known_hosts"


def pin_host_key(home: Path, host_alias: str, host_key: str) -> None:
    """Make `host_alias host_key` the one known_hosts line for the alias."""
    line = f"{host_alias} {host_key}\n"
    _edit_known_hosts(home, lambda lines: [e for e in lines if e.split(" ", 1)[0] != host_alias] + [line])


def forget_host_keys(home: Path, keep: set[str]) -> None:
    """Drop the known_hosts lines of aliases not in `keep` (machines that ended; a session pins
    its key again anyway)."""
    _edit_known_hosts(home, lambda lines: [e for e in lines if e.split(" ", 1)[0] in keep])


def _edit_known_hosts(home: Path, change: Callable[[list[str]], list[str]]) -> None:
    """Rewrite known_hosts (0600) with `change` applied to its lines, under a lock that keeps two
    sessions starting at once from losing each other's line."""
    folder = ssh_dir(home)
    path = folder / "known_hosts"
    lock = os.open(folder / ".known_hosts.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        changed = change(lines)
        if changed == lines:
            return
        tmp = folder / f".known_hosts.{os.getpid()}"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.writelines(changed)
        os.replace(tmp, path)
    finally:
        os.close(lock)
