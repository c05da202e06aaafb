"""Slurm clusters in pool.yaml, and the pure parts of the Slurm provider (no cluster needed)."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from deepops_infra.pool import load_pool
from deepops_infra.pool_clusters import DEFAULT_WAIT_SECONDS
from deepops_infra.providers.slurm import lease
from deepops_infra.providers.slurm.capacity import free_by_model, node_gpus, offers
from deepops_infra.providers.slurm.commands import gres_gpus, job_of
from deepops_infra.yamlfile import FileError

GOOD = """\
hosts:
  - name: localhost
    connection: local
    rates: {gpu_hour: 2, host_hour: 0.1}
clusters:
  - name: hpc
    kind: slurm
    connection: ssh
    address: login.example.org
    user: svc
    partitions: [gpu, gpu-long]
    accounts:
      ml: {account: ml-lab, qos: high}
      default: {account: research}
    rates: {gpu_hour: 1.2, node_hour: 0.3}
    gres_models: {a100: A100-80GB, h100: H100}
    wait: 30s
"""


def _pool(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    return load_pool(path)


def test_a_cluster_entry_is_read_with_its_accounts_rates_and_models(tmp_path):
    pool = _pool(tmp_path, GOOD)
    [cluster] = pool.clusters
    assert (cluster.name, cluster.kind, cluster.connection, cluster.address) == (
        "hpc",
        "slurm",
        "ssh",
        "login.example.org",
    )
    assert cluster.partitions == ("gpu", "gpu-long") and cluster.wait_seconds == 30
    assert cluster.account_for("ml").qos == "high" and cluster.account_for("vision").account == "research"
    assert cluster.model_of("a100") == "A100-80GB" and cluster.model_of("h100") == "H100"
    assert (cluster.gpu_hour, cluster.node_hour) == (1.2, 0.3)
    pool.save()  # the clusters survive a rewrite of the file (`pool add`)
    assert load_pool(pool.path).clusters == pool.clusters
    assert (
        _pool(tmp_path, "clusters:\n  - {name: c, kind: slurm, partitions: [p], rates: {gpu_hour: 1, node_hour: 1}}\n")
        .clusters[0]
        .wait_seconds
        == DEFAULT_WAIT_SECONDS
    )


BAD = [
    ("    kind: slurm\n", "    kind: pbs\n", 7, "kind must be one of slurm"),
    ("    partitions: [gpu, gpu-long]\n", "    partitions: []\n", 11, "partitions: [NAME, ...]` is required"),
    (
        "{gpu_hour: 1.2, node_hour: 0.3}",
        "{gpu_hour: 0, node_hour: 0.3}",
        15,
        "rates.gpu_hour must be a finite positive",
    ),
    ("{gpu_hour: 1.2, node_hour: 0.3}", "{gpu_hour: 1.2}", 15, "rates.node_hour must be a finite positive"),
    ("h100: H100", "h100: Z9000", 16, "unknown GPU model 'Z9000'"),
    ("ml: {account: ml-lab, qos: high}", "ml: {acct: ml-lab}", 13, "accounts.ml must be"),
    ("    wait: 30s\n", "    wait: soon\n", 17, "is not a duration"),
    ("    user: svc\n", "    user: svc\n    colour: blue\n", 11, "unknown cluster setting 'colour'"),
    ("  - name: hpc\n", "  - name: localhost\n", 6, "the name is already used in the pool"),
]


@pytest.mark.parametrize(("old", "new", "line", "message"), BAD)
def test_a_bad_cluster_entry_is_refused_naming_its_line(tmp_path, old, new, line, message):
    assert old in GOOD
    text = GOOD.replace(old, new)
    with pytest.raises(FileError) as caught:
        _pool(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'pool.yaml'}:{line}: ") and message in str(caught.value)


@pytest.mark.slow  # starts the CLI
def test_the_cli_refuses_a_bad_cluster_entry_in_one_line_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "pool.yaml").write_text(GOOD.replace("{gpu_hour: 1.2, node_hour: 0.3}", "{gpu_hour: -1, node_hour: 1}"))
    before = sorted(p.name for p in home.iterdir())
    env = {"DEEPOPS_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in (["pool", "ls"], ["up", "--cloud", "onprem", "--gpus", "A100-80GB:1", "--yes"]):
        proc = subprocess.run([sys.executable, "-m", "deepops_infra", *argv], env=env, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert (
            proc.stderr.strip().count("\n") == 0 and "pool.yaml:15:" in proc.stderr and "Traceback" not in proc.stderr
        )
    assert sorted(p.name for p in home.iterdir()) == before


def test_gres_detail_gives_the_allocated_gpu_indices():
    assert gres_gpus(["gpu:a100:2(IDX:0-1)"]) == ((0, 1), "a100")
    assert gres_gpus(["gpu:3(IDX:0,2-3)"]) == ((0, 2, 3), None)
    assert gres_gpus([]) == ((), None)
    job = job_of({"job_id": 7, "job_state": ["RUNNING"], "start_time": {"set": True, "number": 10}, "gres_detail": []})
    assert (job.id, job.state, job.start.timestamp()) == ("7", "RUNNING", 10)  # 23.02+ shapes read too


def test_capacity_per_partition_and_model(tmp_path):
    [cluster] = _pool(tmp_path, GOOD).clusters
    nodes = [
        node_gpus(
            {
                "name": "n1",
                "state": "mixed",
                "gres": "gpu:a100:4",
                "gres_used": "gpu:a100:3(IDX:0-2)",
                "partitions": ["gpu"],
            }
        ),
        node_gpus(
            {
                "name": "n2",
                "state": "idle",
                "gres": "gpu:a100:4(S:0-1)",
                "gres_used": "gpu:a100:0(IDX:N/A)",
                "partitions": ["gpu"],
            }
        ),
        node_gpus(
            {
                "name": "n3",
                "state": "down",
                "state_flags": ["DRAIN"],
                "gres": "gpu:h100:8",
                "gres_used": "",
                "partitions": ["gpu-long"],
            }
        ),
    ]
    [a100, h100] = offers(cluster, nodes)
    assert (a100.partition, a100.model, a100.largest_node, a100.largest_free, a100.free) == (
        "gpu",
        "A100-80GB",
        4,
        4,
        5,
    )
    assert (h100.model, h100.largest_node, h100.free) == ("H100", 0, 0)  # drained: never planned
    assert free_by_model(cluster, nodes) == {"A100-80GB": (5, 8), "H100": (0, 8)}


def test_a_job_comment_carries_the_tags_and_nothing_else_reads_as_ours():
    text = "deepops-managed=true,deepops-installation=inst-1,deepops-machine=m-1,deepops-team=ml"
    assert lease.parse_comment(text)["deepops-machine"] == "m-1"
    assert lease.parse_comment("nightly build, owner=alice") == {}
    assert lease.time_limit_minutes(timedelta(hours=1), timedelta(minutes=10)) == 70
    assert lease.time_limit_minutes(timedelta(seconds=61), timedelta(0)) == 2
