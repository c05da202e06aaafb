"""The ProxyCommand of every deepops ssh host: `python -m deepops_infra.connect.proxy --home H
(--local | --server URL) ID` (also `deepops ssh-proxy`). It starts the machine's session, pins
the host key from the session's header, then carries the SSH bytes between ssh (stdin/stdout)
and the machine: locally by handing the stream to `cat` (nothing of Python stays in the path),
through the team server over a WebSocket otherwise.

Kept to light imports: it runs once for every ssh, scp or rsync connection.
"""

import os
import subprocess
import sys
from pathlib import Path

from deepops_infra.connect import keys, lease
from deepops_infra.errors import DeepopsError, OperationError, UserError

USAGE = "usage: python -m deepops_infra.connect.proxy --home DIR (--local | --server URL) MACHINE_ID"
HEADER_LIMIT = 4096


def read_header(fd: int) -> bytes:
    """The session's first line, read a byte at a time so nothing after it is taken from the stream."""
    line = b""
    while not line.endswith(b"\n") and len(line) < HEADER_LIMIT:
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def local(home: Path, machine_id: str) -> None:
    """Start the lease's sshd (locally, or over the pool key), pin its key, then become `cat`
    from its stdout to ours; its stdin is ours already. Does not return."""
    from deepops_infra.config import Settings
    from deepops_infra.connect import target

    settings = Settings(home=home)
    machine = target.live(target.find_machine(settings, machine_id))
    _, public = keys.user_key(home)
    command = target.session_command(settings, machine, public)
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(command.argv, stdout=write_end)
    except OSError as exc:
        raise OperationError(f"{machine.id}: cannot start the session: {exc}") from None
    os.close(write_end)
    header = read_header(read_end)
    try:
        host_key = lease.parse_header(header)
    except ValueError as exc:
        code = proc.wait()
        raise OperationError(f"{machine.id}: the session did not start (exit {code}): {exc}") from None
    keys.pin_host_key(home, keys.alias(machine.id), host_key)
    os.dup2(read_end, 0)
    os.close(read_end)
    os.execvp("cat", ["cat"])


def team(home: Path, server: str, machine_id: str) -> int:
    """Open the session through the server and carry it; the exit status."""
    import urllib.parse

    from deepops_infra.connect import remote, wsclient

    client = remote.client(server)
    _, public = keys.user_key(home)
    fingerprint = keys.fingerprint(public)
    path = f"/api/v1/machines/{urllib.parse.quote(machine_id, safe='')}/session"
    url = client.base + path + "?" + urllib.parse.urlencode({"key": fingerprint})
    try:
        session = wsclient.connect(url, client.token or "")
    except wsclient.Refused as refused:
        if refused.problem.get("code") != remote.KEY_UNKNOWN:
            raise refused.error() from None
        remote.register_key(client, public)  # first session from this key: the server learns it
        try:
            session = wsclient.connect(url, client.token or "")
        except wsclient.Refused as again:
            raise again.error() from None
    header = wsclient.first_text(session)
    keys.pin_host_key(home, keys.alias(machine_id), lease.check_public_key(str(header.get("host_key"))))
    code, reason = wsclient.pump(session)
    if code == 1000:
        return 0
    sys.stderr.write(f"deepops: the server ended the session: {reason or code}\n")
    return 1


def parse(argv: list[str]) -> tuple[Path, str | None, str]:
    home, server, mode, rest = None, None, None, list(argv)
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag == "--local":
            mode = "local"
        elif flag in ("--home", "--server") and rest:
            value = rest.pop(0)
            home, server = (Path(value), server) if flag == "--home" else (home, value)
            mode = mode or ("team" if flag == "--server" else None)
        else:
            raise UserError(USAGE)
    if home is None or mode is None or len(rest) != 1:
        raise UserError(USAGE)
    return home, server, rest[0]


def main(argv: list[str] | None = None) -> int:
    try:
        home, server, machine_id = parse(sys.argv[1:] if argv is None else argv)
        os.environ["DEEPOPS_HOME"] = str(home)  # what settings and saved credentials are read from
        if server is None:
            local(home, machine_id)
            return 0  # not reached: local() becomes `cat`
        return team(home, server, machine_id)
    except DeepopsError as exc:
        message = str(exc).strip()
        sys.stderr.write(f"deepops: {message.splitlines()[0] if message else type(exc).__name__}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
