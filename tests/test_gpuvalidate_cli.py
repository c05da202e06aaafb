"""`deepops validate ID` end to end on a real on-prem lease (localhost, real plays): the probe runs
in the lease through the provider's shell, its JSON lands in the ledger and in `deepops show`,
and a machine that fails is released unless --keep.

The lease's environment gets torch by pointing its `python` at this test run's interpreter
(installing the CPU torch wheel into every lease would cost a minute per test); everything else
is the product's path: `up`, the shell command, the stdin-shipped script, the ledger, `down`.
"""

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import declared_pool

pytestmark = pytest.mark.ansible


def _lease_python_with_torch(workspace: Path) -> None:
    python = workspace / "env" / "bin" / "python"
    python.unlink()
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(python, 0o755)


def _up(deepops, *args: str) -> dict:
    return deepops.json("up", "--cloud", "onprem", "--ttl", "30m", "--yes", *args)


def test_validate_a_cpu_machine_stores_the_result(sqlite_deepops, tmp_path):
    d = sqlite_deepops
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    d.env["TMPDIR"] = str(scratch)
    machine = _up(d, "--gpus", "0")
    workspace = d.home / "workspaces" / machine["id"]

    refused = d.run("validate", machine["id"])
    assert refused.returncode == 2
    assert refused.stderr == (
        f"deepops: error: {machine['id']} has no GPUs and its image cpu-minimal has no torch: nothing to validate "
        "(a GPU machine, or an image with torch, can be)\n"
    )

    _lease_python_with_torch(workspace)
    # The manifest is what says the lease has torch: record it as the configure step would have.
    from deepops_infra.ledger import store

    with d.ledger().write() as session:
        row = store.find_machine(session, machine["id"])
        row.manifest = {**row.manifest, "packages": {**row.manifest["packages"], "torch": "2.13.0"}}

    proc = d.run("validate", machine["id"], "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["passed"] is True and result["gpu"]["device"] == "cpu"
    assert result["checks"][0] == {"name": "gpu inventory", "passed": True, "detail": "ordered 0 x any, found none"}

    shown = d.json("show", machine["id"])
    assert shown["status"] == "ready"
    assert shown["validation"]["checks"] == result["checks"]
    assert shown["validation"]["gpu"]["figures"]["cpu"]["bf16_tflops"] > 0
    assert any(e["kind"] == "validation" and e["reason"] == "GPU validation passed" for e in shown["events"])
    text = d.run("show", machine["id"], check=True).stdout
    assert "check ✓ cpu bf16 matmul:" in text
    assert list(scratch.glob("deepops-gpuvalidate.*")) == []  # the shipped script is removed after the run
    d.run("down", machine["id"], "--yes", check=True)


def test_a_machine_that_fails_is_released_unless_kept(sqlite_deepops):
    d = sqlite_deepops
    d.write_pool(declared_pool(1))  # localhost declares an A100-80GB it does not have
    kept = _up(d, "--gpus", "A100-80GB:1")
    shown = d.json("show", kept["id"])
    # cpu-minimal has no torch: the launch said so rather than measuring.
    assert shown["validation"]["checks"][-1]["name"] == "gpu performance"
    assert shown["validation"]["checks"][-1]["passed"] is True
    assert shown["validation"]["checks"][-1]["detail"].startswith("not measured: image cpu-minimal has no torch")
    _lease_python_with_torch(d.home / "workspaces" / kept["id"])

    proc = d.run("validate", kept["id"], "--keep")
    assert proc.returncode == 1
    assert "✗ gpu inventory: ordered 1 x A100-80GB, found none; 0 found" in proc.stderr
    assert proc.stderr.strip().endswith(
        f"deepops: error: {kept['id']} validation failed: gpu inventory: ordered 1 x A100-80GB, found none; "
        "0 found; kept for debugging (--keep)"
    )
    after = d.json("show", kept["id"])
    assert after["status"] == "failed" and after["validation"]["passed"] is False and after["ended_at"] is None
    assert [(e["kind"], e["to"]) for e in after["events"]][-4:] == [
        ("transition", "validating"),
        ("validation", None),
        ("transition", "failed"),
        ("kept", None),
    ]
    d.run("down", kept["id"], "--yes", check=True)

    released = _up(d, "--gpus", "A100-80GB:1")
    _lease_python_with_torch(d.home / "workspaces" / released["id"])
    proc = d.run("validate", released["id"], "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["passed"] is False
    gone = d.json("show", released["id"])
    assert gone["status"] == "failed" and gone["ended_at"] is not None
    assert gone["status_reason"].startswith("validation failed: gpu inventory: ordered 1 x A100-80GB")
    assert gone["events"][-1]["kind"] == "teardown"
    assert not (d.home / "workspaces" / released["id"]).exists()
    assert d.json("ls") == []
