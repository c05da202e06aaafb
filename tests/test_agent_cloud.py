"""The agent on cloud machines: what a cloud configure hands the agent role (systemd mode, the
machine's expiry, idle timeout and grace, `shutdown -h now`, CloudWatch on AWS only), the role's
cloud path run for real with ansible-runner over SSH (a real sshd on 127.0.0.1; the unit is
written and checked, not started: there is no systemd as init here), the installed agent ending
the machine by its dead-man switch, and the reaper's check-in reaching it over SSH."""

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deepops_infra.agent import deepops_agent as da
from deepops_infra.agent.settings import AGENT_SOURCE, CLOUD_STATE_DIR
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine
from deepops_infra.progress import QuietProgress
from deepops_infra.providers.aws.provider import AwsProvider
from deepops_infra.providers.gcp.provider import GcpProvider
from tests.reaper_fakes import add_machine, settings_for

AGENT_CONFIG = "agent:\n  grace: 15m\n  checkin_timeout: 20m\n  sinks: [{type: cloudwatch, namespace: Team}]\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)


def aws_machine(tmp_path: Path, config: str = AGENT_CONFIG, **refs: Any) -> tuple[AwsProvider, Machine]:
    settings = settings_for(tmp_path, config)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    mid = add_machine(ledger, cloud="aws", ttl=timedelta(hours=4), idle_timeout=timedelta(minutes=45))
    with ledger.write() as session:
        row = store.find_machine(session, mid)
        row.region = "eu-west-1"
        row.provider_refs = {"created": True, "instance_id": "i-0abc", "public_ip": "127.0.0.1", **refs}
    with ledger.read() as session:
        return AwsProvider(settings, ledger), store.find_machine(session, mid)


def test_a_cloud_configure_installs_the_agent_in_cloud_mode(tmp_path, monkeypatch):
    provider, machine = aws_machine(tmp_path)
    seen: dict[str, Any] = {}

    def configure_host(settings, machine_id, host, image, workspace, progress, pip_cache="", extra_vars=None):
        seen.update(extra_vars or {})
        return {"python": "3.12"}

    monkeypatch.setattr("deepops_infra.configure.configure_host", configure_host)
    monkeypatch.setattr(provider, "wait_for_ssh", lambda *a: None)
    monkeypatch.setattr(provider, "_prepare_workspace", lambda *a: None)
    before = datetime.now(UTC)
    manifest = provider.configure(machine, SimpleNamespace(name="cpu-minimal"), QuietProgress())

    assert seen["agent_mode"] == "cloud"
    assert seen["agent_source"] == str(AGENT_SOURCE) and seen["agent_python"] == "/usr/bin/python3"
    config = seen["agent_config"]
    with provider.ledger.write() as session:
        assert config["installation_id"] == store.installation_id(session)
    expires = datetime.fromisoformat(config.pop("expires_at"))
    assert before + timedelta(hours=4) <= expires <= datetime.now(UTC) + timedelta(hours=4)
    assert {k: config[k] for k in ("machine_id", "mode", "state_dir", "workspace", "gpu_indexes")} == {
        "machine_id": machine.id,
        "mode": "cloud",
        "state_dir": CLOUD_STATE_DIR,
        "workspace": None,  # the whole machine is watched, not a lease's processes
        "gpu_indexes": None,  # every GPU of the instance
    }
    assert (config["idle_timeout_seconds"], config["grace_seconds"], config["checkin_timeout_seconds"]) == (
        45 * 60,
        15 * 60,
        20 * 60,
    )
    assert config["deadman"] is True and config["shutdown_command"] == ["shutdown", "-h", "now"]
    assert config["sinks"] == [{"type": "cloudwatch", "namespace": "Team", "region": "eu-west-1"}]
    assert set(config) <= set(da.DEFAULTS)  # nothing the agent does not know
    assert manifest["agent"] == {"mode": "cloud", "state_dir": CLOUD_STATE_DIR}  # the reaper checks in there


def test_aws_publishes_to_cloudwatch_by_default_and_other_clouds_never(tmp_path):
    provider, machine = aws_machine(tmp_path / "aws", config="")
    host = SimpleNamespace(python="/usr/bin/python3")
    assert provider.agent_vars(machine, host)["agent_config"]["sinks"] == [
        {"type": "cloudwatch", "namespace": "DeepOps", "region": "eu-west-1"}
    ]
    gcp = GcpProvider(settings_for(tmp_path / "gcp", AGENT_CONFIG), provider.ledger)
    assert gcp.agent_vars(machine, host)["agent_config"]["sinks"] == []  # CloudWatch is AWS's
    off, machine = aws_machine(tmp_path / "off", config="agent:\n  enabled: false\n")
    assert off.agent_vars(machine, host) == {}


def unit_exec(unit: str) -> list[str]:
    [line] = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()


@pytest.mark.ansible
def test_the_roles_cloud_path_then_the_agent_ends_the_machine(tmp_path):
    from deepops_infra.ansible import run_playbook
    from deepops_infra.pool import PoolHost

    provider, machine = aws_machine(tmp_path)
    # The play the cloud runs, on a local connection (clouds reach it over SSH: the same tasks).
    host = PoolHost(name=machine.id, connection="local", python=sys.executable)
    roots = {name: tmp_path / "machine" / name for name in ("state", "opt", "bin", "etc", "units")}
    variables = provider.agent_vars(machine, host)
    marker = tmp_path / "machine" / "shut-down"
    # The dead-man switch's action is checked with a marker, not by powering this machine off;
    # the expiry is past so that the installed agent ends the machine at its first sample.
    variables["agent_config"] |= {
        "shutdown_command": ["touch", str(marker)],
        "expires_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "sinks": [],
    }
    variables |= {
        "agent_state_dir": str(roots["state"]),
        "agent_install_dir": str(roots["opt"]),
        "agent_bin_dir": str(roots["bin"]),
        "agent_config_dir": str(roots["etc"]),
        "agent_unit_dir": str(roots["units"]),
        "agent_start": False,  # no systemd as init here: the unit is written, not started
        "ansible_become": False,  # no sudo here: the files go where this user may write
    }
    for existing in ("bin", "units"):  # /usr/local/bin and /etc/systemd/system exist on a machine
        roots[existing].mkdir(parents=True)
    first = run_playbook(provider.settings, "agent", [host], variables, ident="agent-cloud-1")
    assert first.ok, first.failure
    again = run_playbook(provider.settings, "agent", [host], variables, ident="agent-cloud-2")
    assert again.ok and again.changed == 0  # idempotent

    config = json.loads((roots["etc"] / "config.json").read_text())
    assert config["mode"] == "cloud" and config["state_dir"] == str(roots["state"])
    assert (roots["etc"] / "config.json").stat().st_mode & 0o777 == 0o600
    assert (roots["state"] / "activity").stat().st_mode & 0o777 == 0o666  # `deepops-agent touch` for users
    unit = (roots["units"] / "deepops-agent.service").read_text()
    argv = unit_exec(unit)
    assert argv == [
        sys.executable,
        f"{roots['opt']}/deepops_agent.py",
        "--config",
        f"{roots['etc']}/config.json",
        "run",
    ]
    assert f"Environment=DEEPOPS_MACHINE={machine.id}" in unit and "Restart=always" in unit
    assert f"ReadWritePaths={roots['state']}" in unit and "WantedBy=multi-user.target" in unit
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(roots["units"] / "deepops-agent.service")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        problems = [x for x in (verify.stdout + verify.stderr).splitlines() if "deepops-agent.service" in x]
        assert verify.returncode == 0 and problems == [], verify.stdout + verify.stderr

    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # what systemd runs
    assert ran.returncode == 0, ran.stderr
    assert marker.exists(), ran.stderr  # the dead-man switch ran the shutdown command
    command = subprocess.run(
        [str(roots["bin"] / "deepops-agent"), "status"], capture_output=True, text=True, timeout=30, check=True
    )
    status = json.loads(command.stdout)
    assert status["mode"] == "cloud" and status["ended"]["reason"].startswith("expired at")


@pytest.mark.ansible
def test_the_reapers_check_in_reaches_a_cloud_agent_over_ssh(tmp_path, sshd):
    if sshd.user != "root":
        pytest.skip("a cloud check-in as another user goes through sudo, which this test cannot grant")
    state = tmp_path / "agent-state"
    state.mkdir()
    config = f"aws:\n  ssh_user: {sshd.user}\n"
    provider, machine = aws_machine(tmp_path, config=config, key=str(sshd.key), ssh_port=sshd.port)
    machine.manifest = {"agent": {"mode": "cloud", "state_dir": str(state)}}
    expiry = datetime.now(UTC) + timedelta(hours=9)
    control = {"at": da.iso(datetime.now(UTC)), "expires_at": da.iso(expiry), "idle_timeout_seconds": 120}
    provider.checkin(machine, control)
    assert json.loads((state / "checkin.json").read_text()) == control
    agent = da.Agent({**da.DEFAULTS, "machine_id": machine.id, "state_dir": str(state), "mode": "cloud"})
    seen = agent.control()  # the agent now ends the machine at the extended expiry, not the first
    assert seen["expires_at"] == expiry and seen["idle_timeout"] == 120.0

    machine.manifest = {}  # configured before agents: nothing to reach, no SSH at all
    machine.provider_refs = {**machine.provider_refs, "public_ip": "192.0.2.1"}
    provider.checkin(machine, control)


def test_the_check_in_script_writes_atomically_only_where_an_agent_lives(tmp_path):
    from deepops_infra.agent.status import checkin_script

    state = tmp_path / "state"
    state.mkdir()
    for directory in (state, tmp_path / "no-agent"):
        subprocess.run(["sh", "-c", checkin_script(str(directory))], input='{"at": "x"}', text=True, check=True)
    assert json.loads((state / "checkin.json").read_text()) == {"at": "x"}
    assert (state / "checkin.json").stat().st_mode & 0o777 == 0o600 and not (tmp_path / "no-agent").exists()
    assert sorted(p.name for p in state.iterdir()) == ["checkin.json"]  # no temporary file left
    assert checkin_script("/var/lib/deepops-agent", sudo=True).startswith("sudo -n sh -c ")


def test_an_image_without_boto3_still_gets_a_working_agent(tmp_path, monkeypatch, capsys):
    """The CloudWatch sink needs boto3 on the machine; without it the agent says so and keeps
    sampling (and its dead-man switch armed) instead of crashing at start."""
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    sink = {"type": "cloudwatch", "namespace": "DeepOps", "region": "us-east-1"}
    agent = da.Agent({**da.DEFAULTS, "machine_id": "m-noboto3", "state_dir": str(tmp_path), "sinks": [sink]})
    assert agent.sinks == [] and "not publishing to cloudwatch" in capsys.readouterr().err
    assert agent.step()["machine_id"] == "m-noboto3"


@pytest.mark.ansible
def test_extend_moves_a_cloud_agents_expiry_at_once(tmp_path, sshd):
    """Issue 13, item 7 on a cloud machine: `extend` writes the ledger's new expiry into the agent's
    check-in over SSH right away (the reaper's next cycle is not needed)."""
    from deepops_infra.lifecycle import extend

    if sshd.user != "root":
        pytest.skip("a cloud check-in as another user goes through sudo, which this test cannot grant")
    state = tmp_path / "agent-state"
    state.mkdir()
    provider, machine = aws_machine(tmp_path, config=f"aws:\n  ssh_user: {sshd.user}\n", key=str(sshd.key))
    with provider.ledger.write() as session:
        row = store.find_machine(session, machine.id)
        row.provider_refs = {**row.provider_refs, "ssh_port": sshd.port}
        row.manifest = {"agent": {"mode": "cloud", "state_dir": str(state)}}
    extended = extend(provider.settings, provider.ledger, machine.id, timedelta(hours=2))
    with provider.ledger.read() as session:
        expiry = store.find_machine(session, machine.id).expires_at
    assert extended.expires_at == expiry
    agent = da.Agent({**da.DEFAULTS, "machine_id": machine.id, "state_dir": str(state), "mode": "cloud"})
    assert agent.control()["expires_at"] == expiry
