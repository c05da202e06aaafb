"""OpenSSH client settings for machines: the `-o` options `deepops ssh` passes, and the same as
`Host deepops-<id>` blocks that `deepops ssh-config` prints or keeps in `$DEEPOPS_HOME/ssh/config`
(included from ~/.ssh/config), so plain ssh, scp, rsync and VS Code Remote-SSH reach machines too.

Every host goes through `ProxyCommand <python> -m deepops_infra.connect.proxy ... ID`: locally
or over the pool key to the lease's sshd (local mode), or through the team server (team mode).
"""

import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from deepops_infra.connect import keys
from deepops_infra.connect.target import Endpoint

MARK = "# deepops ssh-config"


def proxy_command(home: Path, server: str | None, machine_id: str) -> list[str]:
    """The ProxyCommand argv: this Python, this DEEPOPS_HOME and this mode, so it works the same
    from an editor that has none of the shell's environment (a token is never on it)."""
    mode = ["--server", server] if server else ["--local"]
    return [sys.executable, "-m", "deepops_infra.connect.proxy", "--home", str(home), *mode, machine_id]


def _value(text: str) -> str:
    """A value as ssh_config reads it: `%` is a token there, whitespace needs quotes."""
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def options(home: Path, server: str | None, endpoint: Endpoint) -> list[tuple[str, str]]:
    """(keyword, value) pairs for one machine: pinned host key, the deepops key only, no prompts."""
    private = keys.ssh_dir(home, create=False) / keys.KEY_NAME
    proxy = " ".join(shlex.quote(a) for a in proxy_command(home, server, endpoint.id)).replace("%", "%%")
    return [
        ("HostName", endpoint.alias),
        ("User", endpoint.user),
        ("ProxyCommand", proxy),
        ("HostKeyAlias", endpoint.alias),
        ("UserKnownHostsFile", _value(str(keys.known_hosts(home)))),
        ("GlobalKnownHostsFile", "/dev/null"),
        ("StrictHostKeyChecking", "yes"),
        ("UpdateHostKeys", "no"),
        ("IdentityFile", _value(str(private))),
        ("IdentitiesOnly", "yes"),
        ("IdentityAgent", "none"),
        ("PasswordAuthentication", "no"),
        ("KbdInteractiveAuthentication", "no"),
        ("ServerAliveInterval", "30"),
        ("LogLevel", "ERROR"),
    ]


def ssh_args(home: Path, server: str | None, endpoint: Endpoint) -> list[str]:
    """`ssh` arguments for the machine: no config files read, every option given."""
    args = ["-F", "/dev/null"]
    for key, value in options(home, server, endpoint):
        args += ["-o", f"{key}={value}" if key != "ProxyCommand" else f"{key} {value}"]
    return args


def host_blocks(home: Path, server: str | None, endpoints: Iterable[Endpoint]) -> str:
    """`Host deepops-<id> deepops-<name>` blocks (a name only where no other machine listed has it)."""
    endpoints = list(endpoints)
    names = [e.name for e in endpoints if e.name]
    mode = f"through the team server {server}" if server else "local mode"
    lines = [
        f"{MARK}: machines of {home} ({mode}); rewritten by `deepops ssh-config --write`",
        "",
    ]
    for e in endpoints:
        patterns = [e.alias] + ([keys.alias(e.name)] if e.name and names.count(e.name) == 1 else [])
        lines.append("Host " + " ".join(patterns))
        lines += [f"  {key} {value}" for key, value in options(home, server, e)]
        lines.append("")
    return "\n".join(lines)


def config_path(home: Path) -> Path:
    return keys.ssh_dir(home, create=False) / "config"


def write(home: Path, text: str) -> Path:
    """Keep `text` in $DEEPOPS_HOME/ssh/config (0600), included from ~/.ssh/config."""
    folder = keys.ssh_dir(home)
    path = config_path(home)
    tmp = folder / f".config.{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    os.replace(tmp, path)
    include(path)
    return path


def include(path: Path) -> bool:
    """Add `Include <path>` at the top of ~/.ssh/config once; whether it was added."""
    from deepops_infra.paths import private_dir

    user_dir = private_dir(Path.home() / ".ssh")
    config = user_dir / "config"
    line = f"Include {_value(str(path))}"
    try:
        current = config.read_text()
    except FileNotFoundError:
        current = ""
    if any(existing.strip() == line for existing in current.splitlines()):
        return False
    text = f"{MARK}: machines (keep this line above every Host block)\n{line}\n\n" + current
    tmp = user_dir / f".config.deepops.{os.getpid()}"
    mode = (config.stat().st_mode & 0o777) if config.exists() else 0o600
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, config)
    return True
