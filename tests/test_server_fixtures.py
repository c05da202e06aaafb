"""A real `deepops serve` process on 127.0.0.1 with users of every role (used by the server,
client and web page tests)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

USERS = {
    "alice": ("ml", "member"),
    "bob": ("ml", "member"),
    "tina": ("ml", "team-admin"),
    "carl": ("cv", "team-admin"),
    "ivan": ("it", "it-admin"),
    "fiona": ("finance", "finance"),
}


@dataclass
class Served:
    url: str
    home: Path
    ledger_url: str
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    _db: Any = None

    def client(self, user: str | None = None, token: str | None = None) -> httpx.Client:
        token = token or (self.tokens[user] if user else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=120)

    def ledger(self) -> Any:
        from deepops_infra.ledger.db import Ledger

        return Ledger(self.ledger_url)

    def db(self) -> Any:
        """One ledger kept open for the test's many reads (closed when the server stops)."""
        if self._db is None:
            self._db = self.ledger()
        return self._db

    def log(self) -> str:
        return (self.home / "serve.log").read_text() if (self.home / "serve.log").exists() else ""


def make_token(ledger: Any, user: str, team: str | None, role: str | None, ttl: timedelta = timedelta(days=1)) -> str:
    from deepops_infra.server import identity

    with ledger.write() as session:
        row = identity.ensure_user(session, user, team, role)
        _, secret = identity.create_token(session, row, ttl, "test")
    return secret


def seed_machine(ledger: Any, mid: str, owner: str, team: str, price: str = "1.50", hours_ago: float = 2) -> None:
    """A ready machine as `record` + `launch` leave it, started `hours_ago` (for reads, extends, costs)."""
    from deepops_infra.ledger import store
    from deepops_infra.ledger.schema import Machine

    at = store.now() - timedelta(hours=hours_ago)
    with ledger.write() as session:
        m = Machine(
            id=mid,
            name=None,
            status="ready",
            cloud="onprem",
            region=None,
            host="nowhere",
            owner=owner,
            team=team,
            project="default",
            image="cpu-minimal",
            image_pin="sha256:test",
            accelerator=None,
            gpu_count=0,
            request={"gpus": "0", "ttl": 8 * 3600},
            plan={"gpu_indexes": []},
            provider_refs={},
            price_per_hour=Decimal(price),
            price_breakdown={"per_hour": price},
            created_at=at,
            ready_at=at,
            expires_at=at + timedelta(hours=8),
        )
        session.add(m)
        session.flush()
        store.add_event(session, m, "transition", "seeded", to_status="ready", at=at, first=True)
        store.open_usage(session, m, at)


def start_server(tmp_path: Path, ledger_url: str, config: str = "", reaper: bool = False) -> Served:
    home = tmp_path / "srv-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "pool.yaml").write_text(
        "hosts:\n  - name: localhost\n    connection: local\n    rates: {gpu_hour: 2, host_hour: 0.1}\n"
    )
    if config:
        (home / "config.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), DEEPOPS_LEDGER_URL=ledger_url, USER=env.get("USER", "tester"))
    env["DEEPOPS_ENV_CACHE"] = os.environ["DEEPOPS_ENV_CACHE"]  # the run's shared cache (conftest.py)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    port = free_port()
    served = Served(url=f"http://127.0.0.1:{port}", home=home, ledger_url=ledger_url, env=env)
    ledger = served.ledger()  # migrates before the server opens it
    for user, (team, role) in USERS.items():
        served.tokens[user] = make_token(ledger, user, team, role)
    ledger.close()
    args = [sys.executable, "-m", "deepops_infra", "serve", "--port", str(port)]
    args.append("--reaper" if reaper else "--no-reaper")
    log = (home / "serve.log").open("w")
    served.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise AssertionError("deepops serve exited:\n" + served.log())
        try:
            if httpx.get(served.url + "/healthz", timeout=1).status_code == 200:
                return served
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("deepops serve did not answer:\n" + served.log())


def stop_server(served: Served) -> None:
    if served._db is not None:
        served._db.close()
    if served.proc is not None and served.proc.poll() is None:
        served.proc.terminate()
        try:
            served.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait()


@pytest.fixture
def served(tmp_path: Path, ledger_url: str) -> Iterator[Served]:
    s = start_server(tmp_path, ledger_url)
    yield s
    stop_server(s)


@pytest.fixture
def served_pg(tmp_path: Path, pg_url: str) -> Iterator[Served]:
    s = start_server(tmp_path, pg_url)
    yield s
    stop_server(s)
