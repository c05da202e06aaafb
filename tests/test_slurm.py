"""Leases on a real Slurm cluster (scripts/slurm-local.sh: 2 nodes, 4 fake A100s each), through the
CLI, on both ledgers: GPUs, waiting and refusal, release, extend, costs, and the reaper."""

import json
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from deepops_infra.ledger import store
from deepops_infra.ledger.schema import Machine, UsageInterval
from deepops_infra.pool import load_pool
from deepops_infra.providers.slurm.commands import Job, Slurm
from tests.conftest import wait_for

UP = ("up", "--cloud", "onprem", "--ttl", "30m", "--yes", "--team", "ml", "--project", "demo")
CONFIG = "agent:\n  interval: 1s\n  checkin_timeout: 1h\nreaper:\n  setup_timeout: 1h\n"


def _slurm(deepops) -> Slurm:  # type: ignore[no-untyped-def]
    return Slurm(load_pool(deepops.pool_file).clusters[0])


def _job(deepops, job_id: str) -> Job:  # type: ignore[no-untyped-def]
    [job] = _slurm(deepops).jobs([job_id], all_states=True)
    return job


def _ours_pending(deepops) -> list[Job]:  # type: ignore[no-untyped-def]
    return [j for j in _slurm(deepops).jobs(all_states=True) if j.state == "PENDING" and j.name.startswith("deepops-")]


def _sbatch(slurm_cluster, *options: str) -> str:  # type: ignore[no-untyped-def]
    out = slurm_cluster.run("sbatch", "--parsable", "--output=/dev/null", "--time=10", *options, "--wrap", "sleep 600")
    return out.strip()


def _setup(deepops, slurm_cluster, wait: str) -> None:  # type: ignore[no-untyped-def]
    deepops.write_pool(slurm_cluster.pool_entry(wait=wait))
    deepops.write_config(CONFIG)


def _cancel_ours_and(deepops, slurm_cluster, *job_ids: str) -> None:  # type: ignore[no-untyped-def]
    """A failed test leaves no job behind: its installation's jobs and `job_ids` are cancelled."""
    with deepops.ledger().write() as session:
        installation = store.installation_id(session)
    ours = [j.id for j in _slurm(deepops).jobs() if f"deepops-installation={installation}" in j.comment]
    if ours or job_ids:
        subprocess.run(["scancel", *ours, *job_ids], env={"SLURM_CONF": str(slurm_cluster.conf)}, check=False)


def _refs(deepops, machine_id: str) -> dict:  # type: ignore[no-untyped-def]
    return deepops.json("show", machine_id)["provider_refs"]


def test_a_lease_gets_its_gpus_waits_is_refused_and_release_frees_them(deepops, slurm_cluster):
    _setup(deepops, slurm_cluster, wait="2m")  # the refusal below waits `--wait 3s`, not this
    a = deepops.json(*UP, "--gpus", "A100-80GB:2")
    assert (a["status"], a["cloud"], a["host"], a["region"]) == ("ready", "slurm", "local-slurm", "gpu")
    refs = _refs(deepops, a["id"])
    job = _job(deepops, refs["job_id"])
    assert job.state == "RUNNING" and len(job.gpu_indexes) == 2 and refs["gpu_indexes"] == list(job.gpu_indexes)
    assert job.comment.startswith("deepops-managed=true,") and f"deepops-machine={a['id']}" in job.comment
    probe = deepops.run(
        "ssh", a["id"], "--", "bash", "-c", "echo $CUDA_VISIBLE_DEVICES $DEEPOPS_GPU_INDEXES", check=True
    )
    visible, indexes = probe.stdout.split()
    assert len(visible.split(",")) == 2 and indexes == ",".join(map(str, job.gpu_indexes))

    # Another user's job takes 2 GPUs of the other node: no node has 3 free now.
    other = "n2" if job.nodes == "n1" else "n1"
    foreign = _sbatch(slurm_cluster, f"--nodelist={other}", "--gres=gpu:a100:2", "--job-name=nightly")
    try:
        wait_for(lambda: _job(deepops, foreign).state == "RUNNING", 60, what="the foreign job to run")
        refused = deepops.run(*UP, "--gpus", "A100-80GB:3", "--wait", "3s")
        assert refused.returncode != 0 and "Slurm could not start the lease within 3s: Resources" in refused.stderr
        assert _ours_pending(deepops) == []  # never a pending job left behind

        extended = deepops.run("extend", a["id"], "--ttl", "30m")
        assert extended.returncode == 0, extended.stderr
        limit = _job(deepops, refs["job_id"]).time_limit_minutes  # (rounded up to the minute)
        assert job.time_limit_minutes + 30 <= limit <= job.time_limit_minutes + 31

        # A request that waits starts once the lease is released.
        _setup(deepops, slurm_cluster, wait="5m")
        waiting = deepops.popen(*UP, "--gpus", "A100-80GB:3", "--json")
        wait_for(
            lambda: [j for j in _ours_pending(deepops) if j.reason == "Resources"], 120, what="the 3-GPU job to wait"
        )
        deepops.run("down", a["id"], "--yes", check=True)
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err
        b = json.loads(out)
        b_job = _job(deepops, _refs(deepops, b["id"])["job_id"])
        assert b["status"] == "ready" and b_job.nodes == job.nodes and len(b_job.gpu_indexes) == 3

        # The released lease's usage is Slurm's own start and end.
        ended = _job(deepops, refs["job_id"])
        assert ended.state == "CANCELLED" and ended.end is not None
        with deepops.ledger().read() as session:
            [interval] = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == a["id"])).all()
            row = session.get(Machine, a["id"])
            assert interval.ended_at == ended.end
            assert abs(interval.started_at - ended.start) < timedelta(seconds=1)
            assert row.total_cost_micro is not None and row.total_cost_micro > 0
        deepops.run("down", b["id"], "--yes", check=True)
    finally:
        _cancel_ours_and(deepops, slurm_cluster, foreign)
    assert not Path(refs["workspace"]).exists()


def _reap(deepops) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)


def _slurm_actions(report: dict) -> list[tuple[str, str]]:
    return [(a["action"], a["resource"]) for a in report["actions"] if a["cloud"] == "slurm"]


def test_the_reaper_marks_then_cancels_orphans_closes_ghosts_and_never_touches_other_jobs(deepops, slurm_cluster):
    _setup(deepops, slurm_cluster, wait="2m")
    lease = deepops.json(*UP, "--gpus", "A100-80GB:1")
    with deepops.ledger().write() as session:
        installation = store.installation_id(session)
    tags = f"deepops-managed=true,deepops-installation={installation},deepops-machine=m-0rphan00"
    orphan = _sbatch(slurm_cluster, "--job-name=deepops-m-0rphan00", f"--comment={tags}")
    lookalike = _sbatch(slurm_cluster, "--job-name=deepops-m-1ookalike", "--comment=deepops-managed=true")
    plain = _sbatch(slurm_cluster, "--job-name=training")
    others = (lookalike, plain)
    try:
        wait_for(lambda: all(_job(deepops, j).state == "RUNNING" for j in (orphan, *others)), 60, what="jobs to run")
        first = _reap(deepops)
        assert _slurm_actions(first) == [("mark-orphan", f"local-slurm:{orphan}")], first
        assert _job(deepops, orphan).state == "RUNNING"

        # A ghost: the lease's job ended without deepops (as at its time limit).
        job_id = _refs(deepops, lease["id"])["job_id"]
        slurm_cluster.run("scancel", job_id)
        wait_for(lambda: not _job(deepops, job_id).active, 60, what="the lease's job to end")
        deepops.write_config(CONFIG + "  orphan_grace: 1s\n")
        time.sleep(1.1)
        second = _reap(deepops)
        assert sorted(_slurm_actions(second)) == [
            ("close-ghost", None),
            ("terminate-orphan", f"local-slurm:{orphan}"),
        ], second
        assert _job(deepops, orphan).state == "CANCELLED"
        shown = deepops.json("show", lease["id"])
        assert shown["status"] == "terminated"
        assert shown["ended_at"].replace("Z", "+00:00") == _job(deepops, job_id).end.isoformat().replace(".000000", "")
        assert all(_job(deepops, j).state == "RUNNING" for j in others)  # never ours: never touched
        assert _slurm_actions(_reap(deepops)) == []
    finally:
        _cancel_ours_and(deepops, slurm_cluster, orphan, *others)


def test_placement_across_a_host_and_a_cluster_picks_by_price(sqlite_deepops, slurm_cluster):
    """The cheaper of an SSH-pool host and a cluster wins; `--host` and `--region` pick exactly."""
    entry = slurm_cluster.pool_entry().replace("clusters:\n", "")
    host = "    rates: {gpu_hour: %s, host_hour: 0.1}\n    gpus:\n      - {index: 0, model: A100-80GB}\n"
    for gpu_hour, cheapest in (("1.0", "localhost"), ("9.0", "local-slurm")):
        pool = "hosts:\n  - name: localhost\n    connection: local\n" + host % gpu_hour + "clusters:\n" + entry
        sqlite_deepops.write_pool(pool)
        plan = sqlite_deepops.json(*UP, "--gpus", "A100-80GB:1", "--dry-run")
        assert plan["host"] == cheapest, plan
    picked = sqlite_deepops.json(*UP, "--gpus", "A100-80GB:1", "--dry-run", "--host", "local-slurm", "--region", "gpu")
    assert (picked["cloud"], picked["host"], picked["region"]) == ("slurm", "local-slurm", "gpu")
    wrong = sqlite_deepops.run(*UP, "--gpus", "A100-80GB:1", "--dry-run", "--host", "local-slurm", "--region", "cpu")
    assert wrong.returncode == 2 and "no partition cpu" in wrong.stderr
    never = sqlite_deepops.run(*UP, "--gpus", "A100-80GB:8", "--dry-run", "--host", "local-slurm")
    assert never.returncode == 2 and "4 x A100-80GB on its largest node" in never.stderr

    [cluster] = [r for r in sqlite_deepops.json("pool", "ls") if r.get("kind") == "slurm"]
    assert cluster["name"] == "local-slurm" and cluster["gpus_free"]["A100-80GB"]["total"] == 8
    listed = sqlite_deepops.run("pool", "ls", check=True).stdout
    assert "local-slurm  slurm  gpu" in listed and "A100-80GB " in listed
    [check] = [r for r in json.loads(sqlite_deepops.run("doctor", "--json").stdout) if r["target"] == "slurm"]
    assert check["ok"] and "22.05" in check["detail"] and "partitions gpu; 2 nodes" in check["detail"]
