"""Shared fixtures: both ledgers, an isolated DEEPOPS_HOME, the CLI as a subprocess, a real sshd.

PostgreSQL: DEEPOPS_TEST_PG_URL (default postgresql://127.0.0.1:5432/postgres as the current
user); each test gets a database of its own. Without a server the PostgreSQL cases are skipped,
unless DEEPOPS_REQUIRE_SERVICES=1 (set by .ci/run), which turns the skip into a failure.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REQUIRE = os.environ.get("DEEPOPS_REQUIRE_SERVICES") == "1"
# One on-prem environment cache for every test (and the next run): its entries are content-addressed
# by the lock's hash, verified at each lease and rebuilt when changed, so sharing them is safe and a
# lease of an image already built skips the install (docs/onprem-environments.md).
ENV_CACHE = os.environ.get("DEEPOPS_ENV_CACHE") or f"/tmp/deepops-test-envs-{os.getuid()}"
os.environ["DEEPOPS_ENV_CACHE"] = ENV_CACHE
PG_URL = os.environ.get("DEEPOPS_TEST_PG_URL", "postgresql://127.0.0.1:5432/postgres")


def _missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (DEEPOPS_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    try:
        import psycopg

        conn = psycopg.connect(
            PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=3
        )
    except Exception as exc:  # no driver or no server
        _missing(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    yield conn
    conn.close()


@pytest.fixture
def pg_url(pg_admin: Any) -> Iterator[str]:
    name = f"deepops_test_{uuid.uuid4().hex[:10]}"
    pg_admin.execute(f'CREATE DATABASE "{name}"')
    from sqlalchemy.engine import make_url

    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    pg_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


@dataclass
class Deepops:
    """The CLI in an isolated DEEPOPS_HOME, run as a real subprocess."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, check: bool = False, timeout: float = 240, **kwargs: Any) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "deepops_infra", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"deepops {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json", check=True).stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "deepops_infra", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pool_file(self) -> Path:
        return self.home / "pool.yaml"

    def write_pool(self, text: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.pool_file.write_text(text)

    def write_config(self, text: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.yaml").write_text(text)

    def ledger(self) -> Any:
        from deepops_infra.ledger.db import Ledger

        return Ledger(self.env.get("DEEPOPS_LEDGER_URL") or f"sqlite:///{self.home / 'ledger.db'}")


@pytest.fixture
def deepops(tmp_path: Path, ledger_url: str) -> Iterator[Deepops]:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), DEEPOPS_LEDGER_URL=ledger_url, USER=env.get("USER", "tester"))
    env["DEEPOPS_ENV_CACHE"] = ENV_CACHE
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    yield Deepops(home=home, env=env)
    end_processes_under(home)


@pytest.fixture
def sqlite_deepops(tmp_path: Path) -> Iterator[Deepops]:
    """The CLI with the embedded default ledger only (for tests where the backend is not the point)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), DEEPOPS_ENV_CACHE=ENV_CACHE)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    yield Deepops(home=home, env=env)
    end_processes_under(home)


def declared_pool(gpus: int, model: str = "A100-80GB") -> str:
    """A pool file whose localhost declares `gpus` GPUs (no detection), at 2.00/GPU-h + 0.10/host-h."""
    lines = "".join(f"      - {{index: {i}, model: {model}}}\n" for i in range(gpus))
    return (
        "hosts:\n  - name: localhost\n    connection: local\n"
        f"    rates: {{gpu_hour: 2, host_hour: 0.1}}\n    gpus:\n{lines}"
    )


def end_processes_under(home: Path) -> list[int]:
    """Kill what a test left running in its leases (agents, workloads): any process whose command
    line or DEEPOPS_WORKSPACE points into the test's DEEPOPS_HOME. A failed test must not leave
    a CPU burner behind for the rest of the suite."""
    import signal

    marker = str(home).encode()
    ended = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or b"DEEPOPS_WORKSPACE=" + marker in environ:
            try:
                os.kill(int(entry), signal.SIGKILL)
                ended.append(int(entry))
            except OSError:
                pass
    return ended


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on 127.0.0.1: (its URL, with a secret token in the query; the JSON bodies
    it received). The token lets tests check that the URL never reaches logs or the ledger."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook?token=secret", received
    server.shutdown()


def wait_for(predicate, timeout: float, what: str = "condition", every: float = 0.2):  # type: ignore[no-untyped-def]
    """The predicate's first truthy value, polled until a deadline generous enough for a loaded
    machine (tests wait for conditions, never assert elapsed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sshd:
    port: int
    user: str
    key: Path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1 with a key only this test run knows."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists() or not shutil.which("ssh-keygen"):
        _missing("OpenSSH server not installed (apt-get install openssh-server)")
    base = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "client_key")], check=True)
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    os.chmod(base / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"StrictModes no\nPidFile {base / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
    )
    log = (base / "sshd.log").open("w")
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                _missing(f"sshd exited: {(base / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
    import getpass

    yield Sshd(port=port, user=getpass.getuser(), key=base / "client_key")
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@dataclass
class SlurmCluster:
    """The local Slurm cluster of scripts/slurm-local.sh: 2 nodes, 4 fake A100 GPUs on each."""

    dir: Path
    conf: Path
    env: dict[str, str]

    def pool_entry(self, **extra: str) -> str:
        """A pool.yaml `clusters:` fragment naming this cluster `local-slurm` (`extra`: more keys)."""
        out = subprocess.run(
            ["bash", str(SLURM_SCRIPT), "pool-entry"], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        return out + "".join(f"    {k}: {v}\n" for k, v in extra.items())

    def run(self, *argv: str) -> str:
        return subprocess.run(
            argv, env={**os.environ, "SLURM_CONF": str(self.conf)}, capture_output=True, text=True, check=True
        ).stdout


SLURM_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real Slurm 22.05 cluster on this machine (scripts/slurm-local.sh), in a state directory of
    the test run's own; stopped at the end when this run started it."""
    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        _missing("Slurm not installed or not root (scripts/test-services.sh installs it as root)")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)  # a cluster per worker
    base = Path(os.environ.get("DEEPOPS_TEST_SLURM_DIR", "/tmp/deepops-slurm-test")) / f"w{worker}"
    port = str(6927 + 3 * worker)
    env = {**os.environ, "DEEPOPS_SLURM_DIR": str(base), "DEEPOPS_SLURM_GPUS": "8", "DEEPOPS_SLURM_PORT": port}
    proc = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        _missing(f"the local Slurm cluster did not start: {proc.stderr[-500:]}")
    cluster = SlurmCluster(dir=base, conf=base / "etc" / "slurm.conf", env=env)
    yield cluster
    if "already running" not in proc.stderr:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], env=env, capture_output=True)


# -- layers -------------------------------------------------------------------------------------
# `make test-fast` runs the unit and ledger tests: no Ansible plays (the `ansible` marker) and none
# of the tests that start the CLI, the team server or a browser as processes (marked `slow` here,
# by the fixtures that start them or by module). `make test` runs everything.
PROCESS_FIXTURES = {"deepops", "sqlite_deepops", "sshd", "served", "served_pg", "headers_server", "slurm_cluster"}
PROCESS_MODULES = {
    "test_connect_sessions",
    "test_client",
    "test_server_schemathesis",
    "test_server_workers",
    "test_webui",
    "test_webui_admin",
    "test_catalog_refresh_cli",
    "test_reaper_cli",
    "test_like",
    "test_server_trust",
    "test_release_during_launch",
    "test_launch_liveness",
    "test_file_modes",
    "test_service_team",
    "test_work_cli",
    "test_work_team",
    "test_jupyter",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        if module in PROCESS_MODULES or PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
