"""The on-prem provider's read path: discover and utilization (nvidia-smi through the fact module)."""

import os

import pytest

from deepops_infra.config import Settings
from deepops_infra.intake import Options, build_request
from deepops_infra.ledger.db import Ledger
from deepops_infra.lifecycle import Lifecycle
from deepops_infra.progress import QuietProgress
from deepops_infra.providers.onprem.provider import OnpremProvider

pytestmark = pytest.mark.ansible

SMI = """#!/bin/sh
echo '0, GPU-aaa, NVIDIA L4, 23034, 550.54.15, 0, 0'
echo '1, GPU-bbb, NVIDIA L4, 23034, 550.54.15, 37, 2303'
"""


def test_discover_and_utilization(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DEEPOPS_HOME", str(tmp_path / "home"))
    for var in ("DEEPOPS_LEDGER_URL", "DEEPOPS_CONFIG", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings.from_env()
    settings.ensure_home()
    ledger = Ledger(settings.ledger_url)
    provider = OnpremProvider(settings, ledger)
    request, image = build_request(settings, Options(gpus="L4:1", ttl="1h"))
    plans = provider.plan(request, image)  # detects: two L4s
    assert plans[0].details["candidate_gpus"] == [0, 1]
    machine = Lifecycle(settings, ledger, provider, QuietProgress()).record(request, image, plans)
    assert machine.plan["gpu_indexes"] == [0]
    machine.provider_refs = {"gpu_indexes": [1]}  # as if the lease held the busy GPU
    sample = provider.utilization(machine)
    assert sample is not None and sample.gpu_percent == [37.0] and sample.active is True
    assert sample.gpu_memory_percent == [pytest.approx(100 * 2303 / 23034)]
    machine.provider_refs = {"gpu_indexes": [0]}
    idle = provider.utilization(machine)
    assert idle.gpu_percent == [0.0] and idle.active is False
    (settings.workspaces / machine.id).mkdir(parents=True)  # discover reads the hosts, not the ledger
    [found] = provider.discover()
    assert found.machine_id == machine.id and found.location == "localhost"
