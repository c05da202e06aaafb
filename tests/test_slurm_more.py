"""Slurm leases, the rest of issue 15: `--wait` through the one request path; a cluster with
accounting (slurmdbd + MariaDB: usage from `sacct --json`); a lease whose deepops is gone ends at
Slurm's time limit and the reaper closes it at the job's real end; extend and down in team mode.

The accounting cluster is this module's own (scripts/slurm-local.sh with DEEPOPS_SLURM_ACCOUNTING=1,
its own folder, ports and database); the rest of the suite uses the job completion log."""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from deepops_infra.ledger.schema import Machine, UsageInterval
from deepops_infra.providers.slurm.commands import Job, job_of
from tests.conftest import SLURM_SCRIPT, SlurmCluster, _missing, wait_for
from tests.test_slurm import _cancel_ours_and, _refs

UP = ("up", "--cloud", "onprem", "--host", "local-slurm", "--yes", "--team", "ml", "--project", "demo")
CONFIG = "agent:\n  interval: 1s\n  checkin_timeout: 1h\nreaper:\n  setup_timeout: 1h\n"


# -- --wait: one request path ---------------------------------------------------------------------


def test_wait_flows_from_the_options_to_the_ledger_row_the_api_and_the_client(tmp_path, monkeypatch):
    from deepops_infra.client import Remote
    from deepops_infra.config import Settings
    from deepops_infra.errors import UserError
    from deepops_infra.intake import Options, build_request
    from deepops_infra.request import MachineRequest
    from deepops_infra.server.app import MachineIn
    from deepops_infra.service.machines import MachineOrder

    for var in ("DEEPOPS_CONFIG", "DEEPOPS_POOL", "DEEPOPS_LEDGER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEEPOPS_HOME", str(tmp_path))
    settings = Settings.from_env()
    order = MachineOrder(gpus="0", ttl="1h", wait="3s")
    assert order.options().wait == "3s"
    request, _ = build_request(settings, order.options())
    assert request.wait == timedelta(seconds=3)
    stored = request.to_json()
    assert stored["wait"] == 3 and MachineRequest.from_json(stored) == request

    plain, _ = build_request(settings, Options(gpus="0", ttl="1h"))
    assert plain.wait is None and "wait" not in plain.to_json()  # rows as before
    old_row = plain.to_json()
    assert MachineRequest.from_json(old_row).wait is None  # an old ledger row still loads

    with pytest.raises(UserError, match=r"^--wait: 'soon' is not a duration"):
        build_request(settings, Options(gpus="0", wait="soon"))
    with pytest.raises(UserError, match=r"^--wait: '0s' must be longer than zero"):
        build_request(settings, Options(gpus="0", wait="0s"))

    assert (
        MachineOrder(**MachineIn(gpus="0", wait="3s").model_dump(exclude={"dry_run", "keep_on_failure"})).wait == "3s"
    )

    sent: list[Any] = []

    class Capture:
        def call(self, method: str, path: str, body: Any = None, **_: Any) -> dict:
            sent.append((method, path, body))
            return {}

    Remote(Capture()).request(order)  # type: ignore[arg-type]
    assert sent == [
        ("POST", "/machines", {k: v for k, v in asdict(order).items() if v is not None} | {"dry_run": False})
    ]
    assert sent[0][2]["wait"] == "3s"


def test_wait_on_the_command_line_is_explained_and_checked(sqlite_deepops):
    from typer.testing import CliRunner

    from deepops_infra.cli import app

    shown = CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"})
    assert "Slurm clusters only" in shown.output
    bad = sqlite_deepops.run("up", "--gpus", "0", "--wait", "soon", "--dry-run")
    assert bad.returncode == 2 and "--wait: 'soon' is not a duration" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and not (sqlite_deepops.home / "ledger.db").exists()


# -- the accounting cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def accounting_cluster() -> Iterator[SlurmCluster]:
    """The local cluster with slurmdbd and MariaDB (8 GPUs), this module's own."""
    if os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("mysql"):
        _missing("Slurm or MariaDB not installed, or not root (scripts/test-services.sh installs them)")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = Path(os.environ.get("DEEPOPS_TEST_SLURM_DIR", "/tmp/deepops-slurm-test")) / f"acct{worker}"
    env = {
        **os.environ,
        "DEEPOPS_SLURM_DIR": str(base),
        "DEEPOPS_SLURM_GPUS": "8",
        "DEEPOPS_SLURM_PORT": str(7027 + 4 * worker),
        "DEEPOPS_SLURM_ACCOUNTING": "1",
    }
    proc = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        _missing(f"the local Slurm cluster with accounting did not start: {proc.stderr[-500:]}")
    yield SlurmCluster(dir=base, conf=base / "etc" / "slurm.conf", env=env)
    if "already running" not in proc.stderr:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop"], env=env, capture_output=True)


def _job(cluster: SlurmCluster, job_id: str) -> Job:
    raw = json.loads(cluster.run("squeue", "--json", "--states=all", f"--jobs={job_id}"))
    [job] = [job_of(j) for j in raw["jobs"] if str(j["job_id"]) == job_id]
    return job


def _sacct(cluster: SlurmCluster, job_id: str) -> dict:
    [job] = json.loads(cluster.run("sacct", "--json", "-j", job_id))["jobs"]
    return job


@pytest.mark.slow
def test_usage_comes_from_slurm_accounting_where_the_cluster_has_it(deepops, accounting_cluster):
    deepops.write_pool(accounting_cluster.pool_entry())
    deepops.write_config(CONFIG)
    try:
        lease = deepops.json(*UP, "--gpus", "A100-80GB:1", "--ttl", "30m", "--wait", "1m")
        refs = _refs(deepops, lease["id"])
        deepops.run("down", lease["id"], "--yes", check=True)
        accounted = _sacct(accounting_cluster, refs["job_id"])
        assert accounted["state"]["current"] == "CANCELLED"
        assert f"deepops-machine={lease['id']}" in accounted["comment"]["job"]  # AccountingStoreFlags=job_comment
        assert _refs(deepops, lease["id"])["usage_from"] == "sacct"
        with deepops.ledger().read() as session:
            [interval] = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == lease["id"])).all()
            assert int(interval.ended_at.timestamp()) == accounted["time"]["end"]
            assert abs(interval.started_at.timestamp() - accounted["time"]["start"]) < 1
            assert session.get(Machine, lease["id"]).total_cost_micro > 0
    finally:
        _cancel_ours_and(deepops, accounting_cluster)


@pytest.mark.slow
def test_a_lease_whose_deepops_is_gone_ends_at_its_slurm_time_limit(sqlite_deepops, accounting_cluster):
    """No agent, no reaper: Slurm's time limit (TTL + grace, 1 minute) ends the job (TIMEOUT, which
    Slurm checks about every 30 s); the reaper, back later, closes the machine at the job's end."""
    d = sqlite_deepops
    d.write_pool(accounting_cluster.pool_entry())
    d.write_config("agent:\n  enabled: false\n  grace: 10s\nreaper:\n  setup_timeout: 1h\n")
    try:
        lease = d.json(*UP, "--gpus", "A100-80GB:1", "--ttl", "30s")
        job_id = _refs(d, lease["id"])["job_id"]
        assert _job(accounting_cluster, job_id).time_limit_minutes == 1
        wait_for(lambda: _job(accounting_cluster, job_id).state == "TIMEOUT", 240, what="Slurm to end the job")
        ended = _job(accounting_cluster, job_id)
        reaped = json.loads(d.run("reap", "--once", "--json", check=True).stdout)
        assert [a["action"] for a in reaped["actions"] if a["cloud"] == "slurm"] == ["close-ghost"], reaped
        shown = d.json("show", lease["id"])
        assert shown["status"] == "terminated" and shown["provider_refs"]["usage_from"] == "sacct"
        assert shown["ended_at"].replace("Z", "+00:00") == ended.end.isoformat().replace(".000000", "")
    finally:
        _cancel_ours_and(d, accounting_cluster)


# -- team mode ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_extend_and_down_of_a_slurm_lease_in_team_mode(tmp_path, accounting_cluster):
    from tests.test_server_fixtures import start_server, stop_server
    from tests.test_service_team import cli, laptop, refused

    server = start_server(tmp_path, f"sqlite:///{tmp_path / 'srv-home' / 'ledger.db'}", config=CONFIG)
    (server.home / "pool.yaml").write_text(accounting_cluster.pool_entry())
    alice = laptop(server, tmp_path, "alice")
    try:
        bad = cli(alice, *UP, "--gpus", "A100-80GB:1", "--wait", "soon")
        assert refused(bad, "--wait", "not a duration"), bad.stderr
        up = cli(alice, *UP, "--gpus", "A100-80GB:1", "--ttl", "30m", "--wait", "1m", "--json")
        assert up.returncode == 0, up.stderr + server.log()
        machine = json.loads(up.stdout)
        with server.ledger().read() as session:
            row = session.get(Machine, machine["id"])
            job_id, request = row.provider_refs["job_id"], dict(row.request)
        assert request["wait"] == 60  # --wait came through the server into the ledger row
        limit = _job(accounting_cluster, job_id).time_limit_minutes
        extended = cli(alice, "extend", machine["id"], "--ttl", "30m")
        assert extended.returncode == 0, extended.stderr
        assert limit + 30 <= _job(accounting_cluster, job_id).time_limit_minutes <= limit + 31
        down = cli(alice, "down", machine["id"], "--yes")
        assert down.returncode == 0, down.stderr
        wait_for(lambda: cli(alice, "show", machine["id"], "--json").stdout.count('"terminated"') > 0, 120)
        assert _job(accounting_cluster, job_id).state == "CANCELLED"
    finally:
        stop_server(server)
        with server.ledger().write() as session:
            ours = [m.provider_refs.get("job_id") for m in session.scalars(select(Machine)) if m.provider_refs]
        subprocess.run(["scancel", *filter(None, ours)], env={"SLURM_CONF": str(accounting_cluster.conf)}, check=False)
