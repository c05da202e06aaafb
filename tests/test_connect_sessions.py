"""Sessions end to end, through the real CLI, ssh, scp and sshd: local mode on localhost (a real
lease) and on a real sshd host, team mode through a real server with member tokens (only the
machine's owner and their admins get in, every session is audited, a revoked token ends one)."""

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from deepops_infra.ledger.schema import AuditEntry, Machine
from tests.conftest import Deepops, declared_pool, end_processes_under, free_port, wait_for
from tests.test_server_fixtures import Served, make_token, seed_machine, served

__all__ = ["served"]


def _env(home: Path, user_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), HOME=str(user_home), USER=env.get("USER", "tester"), **extra)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _ssh(config: Path, host: str, command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Plain ssh with a generated config (in team mode the ProxyCommand finds the token in `env`,
    as it would find a `deepops login`)."""
    argv = ["ssh", "-F", str(config), host, command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


def _scp(config: Path, source: Path, dest: str, env: dict[str, str] | None = None) -> None:
    argv = ["scp", "-F", str(config), str(source), dest]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def _workspace(path: Path, machine_id: str, gpus: str) -> Path:
    """A lease workspace as the lease role leaves it (its env.sh), for a seeded machine."""
    (path / ".deepops").mkdir(parents=True, mode=0o700)
    (path / ".deepops" / "env.sh").write_text(
        f"export DEEPOPS_MACHINE={machine_id}\nexport DEEPOPS_WORKSPACE={path}\n"
        f"export DEEPOPS_LEASE_KEY=test-{machine_id}\nexport CUDA_VISIBLE_DEVICES={gpus}\n"
        'cd "$DEEPOPS_WORKSPACE" || return 1\n'
    )
    return path


def _seed(ledger: Any, mid: str, owner: str, team: str, host: str, workspace: Path) -> None:
    seed_machine(ledger, mid, owner, team)
    with ledger.write() as session:
        m = session.get(Machine, mid)
        m.host, m.provider_refs = host, {"workspace": str(workspace)}


def _forwarded(deepops_cli: list[str], env: dict[str, str], machine: str, workspace: Path) -> None:
    """An HTTP server started in the machine answers on a local port through `-L ... -N`."""
    inner, outer = free_port(), free_port()
    (workspace / "hello.txt").write_text("hello from the machine\n")
    start = f"nohup {sys.executable} -m http.server {inner} --bind 127.0.0.1 >/dev/null 2>&1 &"
    subprocess.run([*deepops_cli, "ssh", machine, "--", start], env=env, check=True, timeout=120, capture_output=True)
    forward = subprocess.Popen(
        [*deepops_cli, "ssh", machine, "-L", f"{outer}:localhost:{inner}", "-N"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def fetch() -> str | None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{outer}/hello.txt", timeout=5).read().decode()
        except OSError:
            return None

    try:
        assert wait_for(fetch, 120, what="the forwarded HTTP server") == "hello from the machine\n"
    finally:
        forward.terminate()
        forward.wait(timeout=30)


CLI = [sys.executable, "-m", "deepops_infra"]


# -- local mode, localhost: a real lease ------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deepops, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("connect")
    deepops = Deepops(home=base / "home", env=_env(base / "home", base / "user"))
    (base / "user").mkdir()
    deepops.write_pool(declared_pool(2))
    machine = deepops.json("up", "--gpus", "A100-80GB:1", "--ttl", "1h", "--yes", "--name", "box")
    yield deepops, machine
    deepops.run("down", machine["id"], "--yes")
    end_processes_under(deepops.home)


@pytest.mark.ansible
def test_ssh_runs_commands_as_ssh_does(local: tuple[Deepops, dict[str, Any]]) -> None:
    deepops, machine = local
    ok = deepops.run("ssh", machine["id"], "--", "echo", "ok")
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    shell = deepops.run("ssh", "box", "--", "echo a; echo $DEEPOPS_MACHINE; exit 3")  # by name, one shell line
    assert (shell.returncode, shell.stdout) == (3, f"a\n{machine['id']}\n"), shell.stderr
    argv = deepops.run("ssh", machine["id"], "--", "sh", "-c", 'echo "$PWD"')  # several words: run as given
    assert argv.stdout.strip() == str(deepops.home / "workspaces" / machine["id"])


@pytest.mark.ansible
def test_ssh_config_hosts_serve_ssh_and_scp(local: tuple[Deepops, dict[str, Any]], tmp_path: Path) -> None:
    deepops, machine = local
    written = deepops.run("ssh-config", "--write", check=True)
    assert f"deepops-{machine['id']}" in written.stderr
    user_config = Path(deepops.env["HOME"]) / ".ssh" / "config"
    alias = f"deepops-{machine['id']}"
    out = _ssh(user_config, "deepops-box", "echo $CUDA_VISIBLE_DEVICES")
    assert out.returncode == 0 and out.stdout.strip() == str(machine["gpu_indexes"][0]), out.stderr
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    _scp(user_config, tmp_path / "data.csv", f"{alias}:data.csv")
    assert (deepops.home / "workspaces" / machine["id"] / "data.csv").read_text() == "a,b\n1,2\n"
    deepops.run("ssh-config", "--write", check=True)
    assert user_config.read_text().count("Include") == 1


@pytest.mark.ansible
def test_port_forward_reaches_a_server_in_the_machine(local: tuple[Deepops, dict[str, Any]]) -> None:
    deepops, machine = local
    _forwarded(CLI, deepops.env, machine["id"], deepops.home / "workspaces" / machine["id"])


# -- local mode, an SSH pool host ---------------------------------------------------------------------


def test_a_lease_on_an_ssh_host(sqlite_deepops: Deepops, sshd: Any, tmp_path: Path) -> None:
    deepops = sqlite_deepops
    deepops.env["HOME"] = str(tmp_path / "user")
    root = tmp_path / "remote"
    workspace = _workspace(root / "m-sshbox1", "m-sshbox1", "2,3")
    deepops.write_pool(
        f"hosts:\n  - name: sshbox\n    connection: ssh\n    address: 127.0.0.1\n    port: {sshd.port}\n"
        f"    user: {sshd.user}\n    key: {sshd.key}\n    workspace_root: {root}\n"
        "    rates: {gpu_hour: 2, host_hour: 0.1}\n"
    )
    ledger = deepops.ledger()
    _seed(ledger, "m-sshbox1", "tester", "default", "sshbox", workspace)
    ledger.close()
    ok = deepops.run("ssh", "m-sshbox1", "--", "echo", "ok")
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    config = tmp_path / "ssh_config"
    config.write_text(deepops.run("ssh-config", check=True).stdout)
    out = _ssh(config, "deepops-m-sshbox1", 'echo "$CUDA_VISIBLE_DEVICES $SSH_CONNECTION"')
    cuda, peer = out.stdout.split(" ", 1)
    assert out.returncode == 0 and cuda == "2,3" and peer.startswith("127.0.0.1 "), out.stderr
    (tmp_path / "model.bin").write_bytes(os.urandom(300_000))
    _scp(config, tmp_path / "model.bin", "deepops-m-sshbox1:model.bin")
    assert (workspace / "model.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()
    end_processes_under(tmp_path)


# -- team mode: through the server ------------------------------------------------------------------


def _audit(s: Served, action: str, detail: bool = False) -> list[tuple[Any, ...]]:
    with s.db().read() as session:
        rows = session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
        return [(e.actor, e.target, e.status_code, e.outcome, *((e.detail,) if detail else ())) for e in rows]


def _killed_while_the_machine_writes(served: Served, env: dict[str, str]) -> None:
    """A client that dies while the machine is still sending ends its session normally ("ok")."""
    flood = subprocess.Popen(
        [*CLI, "ssh", "m-alice001", "--", "yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert flood.stdout is not None and flood.stdout.read(256 * 1024)
    finally:
        os.killpg(flood.pid, signal.SIGKILL)
        flood.wait(timeout=60)

    def flood_ended() -> tuple[Any, ...] | None:  # the one session that sent what was read, and more
        sent = [row for row in _audit(served, "ssh_session_end", detail=True) if _bytes_out(row[4]) >= 256 * 1024]
        return sent[0] if sent else None

    ended = wait_for(flood_ended, 120, what="the session to end")
    assert ended[3] == "ok" and ended[4].startswith("the client closed the session"), ended


def _bytes_out(detail: str | None) -> int:
    match = re.search(r"(\d+) B out", detail or "")
    return int(match.group(1)) if match else 0


def test_team_sessions_are_brokered_checked_audited_and_revoked(served: Served, tmp_path: Path) -> None:
    workspace = _workspace(tmp_path / "ws" / "m-alice001", "m-alice001", "1")
    ledger = served.db()
    _seed(ledger, "m-alice001", "alice", "ml", "localhost", workspace)
    _seed(ledger, "m-bob00001", "bob", "ml", "localhost", _workspace(tmp_path / "ws" / "m-bob00001", "m-bob00001", ""))

    def laptop(user: str, token: str | None = None) -> dict[str, str]:
        token = token or served.tokens[user]
        return _env(tmp_path / user, tmp_path / f"{user}-home", DEEPOPS_SERVER=served.url, DEEPOPS_TOKEN=token)

    alice = laptop("alice")
    ok = subprocess.run([*CLI, "ssh", "m-alice001", "--", "echo ok"], env=alice, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr + served.log()[-2000:]
    config = tmp_path / "alice.ssh_config"
    listed = subprocess.run([*CLI, "ssh-config"], env=alice, capture_output=True, text=True, check=True).stdout
    config.write_text(listed)
    assert "Host deepops-m-alice001" in listed and "m-bob00001" not in listed and "dpo_" not in listed
    out = _ssh(config, "deepops-m-alice001", "echo $CUDA_VISIBLE_DEVICES", alice)
    assert (out.returncode, out.stdout) == (0, "1\n"), out.stderr
    (tmp_path / "train.py").write_text("print('hi')\n")
    _scp(config, tmp_path / "train.py", "deepops-m-alice001:train.py", alice)
    assert (workspace / "train.py").read_text() == "print('hi')\n"
    _forwarded(CLI, alice, "m-alice001", workspace)
    _killed_while_the_machine_writes(served, alice)

    # Her team-admin may open it; another member (a shell or a port) and finance get a 404.
    tina = subprocess.run([*CLI, "ssh", "m-alice001", "--", "echo", "tina"], env=laptop("tina"), capture_output=True)
    assert tina.returncode == 0 and tina.stdout == b"tina\n"
    for user, args in (("bob", ["--", "true"]), ("bob", ["-L", "8000", "-N"]), ("fiona", ["--", "true"])):
        refused = subprocess.run([*CLI, "ssh", "m-alice001", *args], env=laptop(user), capture_output=True, text=True)
        assert refused.returncode == 2 and "no machine 'm-alice001' visible to you" in refused.stderr, refused.stderr
    proxy = [sys.executable, "-m", "deepops_infra.connect.proxy", "--home", str(tmp_path / "bob")]
    direct = subprocess.run([*proxy, "--server", served.url, "m-alice001"], env=laptop("bob"), capture_output=True)
    assert direct.returncode == 2 and b"visible to you" in direct.stderr  # the session route itself says 404
    forged = subprocess.run(
        [*proxy, "--server", served.url, "m-alice001"], env=laptop("bob", "dpo_x"), capture_output=True
    )
    assert forged.returncode == 2 and b"server refused (401)" in forged.stderr

    bad = served.client("alice").post("/me/ssh-keys", json={"public_key": "ssh-ed25519 AAAA"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("public_key: not an OpenSSH public key")

    opened = _audit(served, "ssh_session")
    assert ("alice", "m-alice001", 101, "ok") in opened and ("tina", "m-alice001", 101, "ok") in opened
    assert ("bob", "m-alice001", 404, "refused") in opened and not any(u == "bob" and s == 101 for u, _, s, _ in opened)
    ended = _audit(served, "ssh_session_end", detail=True)
    assert all(outcome == "ok" for actor, _, _, outcome, _ in ended if actor == "alice"), ended

    # A revoked token ends the session it opened.
    token = make_token(ledger, "alice", None, None)
    token_id = httpx.get(served.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["token"]
    before = len(_audit(served, "ssh_session"))
    held = subprocess.Popen(
        [*CLI, "ssh", "m-alice001", "--", "sleep 300"],
        env=laptop("alice", token),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(_audit(served, "ssh_session")) > before, 120, what="the session to open")
        assert served.client("alice").delete(f"/tokens/{token_id}").status_code == 200
        _, err = held.communicate(timeout=120)
    finally:
        held.kill()
    assert held.returncode != 0 and "the token was revoked" in err, err
    assert ("alice", "m-alice001", 4401, "refused") in _audit(served, "ssh_session_end")
    end_processes_under(tmp_path)


# -- how a session's end is classified (the two pumps, with stand-ins for the socket and the process)


class _Pipe:
    def __init__(self, chunks: list[bytes] | None = None, broken: bool = False) -> None:
        self.chunks, self.broken = chunks or [], broken

    async def read(self, _: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, _: bytes) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")

    async def drain(self) -> None:
        if self.broken:
            raise ConnectionResetError("Connection lost")


class _Socket:
    def __init__(self, gone: BaseException | None = None, messages: list[dict[str, Any]] | None = None) -> None:
        self.gone, self.messages = gone, messages or []

    async def send_bytes(self, _: bytes) -> None:
        if self.gone is not None:
            raise self.gone

    async def receive(self) -> dict[str, Any]:
        return self.messages.pop(0) if self.messages else {"type": "websocket.disconnect"}


def _broker(ws: _Socket) -> Any:
    from deepops_infra.server.sessions import Broker

    broker = Broker.__new__(Broker)  # the pumps use only the socket and the byte counts
    broker.ws, broker.sent, broker.received = ws, 0, 0
    return broker


@pytest.mark.parametrize("gone", ["disconnect", "oserror"])
def test_a_client_gone_mid_write_is_a_normal_end(gone: str) -> None:
    import asyncio
    import types

    from starlette.websockets import WebSocketDisconnect

    error = WebSocketDisconnect(1006) if gone == "disconnect" else ConnectionResetError("peer went away")
    proc = types.SimpleNamespace(stdout=_Pipe([b"x" * 10]))
    assert asyncio.run(_broker(_Socket(error)).downstream(proc)) == (1000, "the client closed the session")


def test_a_machine_side_that_ended_first_is_a_normal_end() -> None:
    import asyncio
    import types

    proc = types.SimpleNamespace(stdin=_Pipe(broken=True))
    ws = _Socket(messages=[{"type": "websocket.receive", "bytes": b"bye"}])
    assert asyncio.run(_broker(ws).upstream(proc)) == (1000, "the session ended")
