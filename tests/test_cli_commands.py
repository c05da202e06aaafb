"""pool, doctor, images, ls, show, extend and down through the CLI (no lease plays here)."""

import pytest

from tests.test_cli_bad_input import assert_one_line_error


def test_ls_on_a_fresh_home_writes_nothing(sqlite_deepops):
    assert sqlite_deepops.json("ls") == []
    assert sqlite_deepops.json("ls", "--all") == []
    assert not sqlite_deepops.home.exists()


def test_pool_add_ls_rm(sqlite_deepops, tmp_path):
    d = sqlite_deepops
    d.run(
        "pool",
        "add",
        "old-box",
        "--address",
        "10.1.2.3",
        "--user",
        "ml",
        "--port",
        "2222",
        "--gpu-rate",
        "0.6",
        "--host-rate",
        "0.1",
        "--declare-gpus",
        "V100:0,1",
        "--label",
        "region=lab-b",
        check=True,
    )
    hosts = {h["name"]: h for h in d.json("pool", "ls")}
    assert set(hosts) == {"localhost", "old-box"}
    box = hosts["old-box"]
    assert box["gpu_source"] == "declared" and [g["index"] for g in box["gpus_offered"]] == [0, 1]
    assert box["rates"] == {"gpu_hour": 0.6, "host_hour": 0.1} and box["labels"] == {"region": "lab-b"}
    assert "old-box" in d.pool_file.read_text()
    assert_one_line_error(
        d.run("pool", "add", "old-box", "--address", "x", "--gpu-rate", "1", "--host-rate", "1"), "already in the pool"
    )
    assert_one_line_error(d.run("pool", "add", "new", "--address", "x"), "--gpu-rate and --host-rate are required")
    assert_one_line_error(
        d.run("pool", "add", "new", "--address", "x", "--gpu-rate", "0", "--host-rate", "1"), "never priced at zero"
    )
    assert_one_line_error(
        d.run(
            "pool",
            "add",
            "new",
            "--address",
            "x",
            "--gpu-rate",
            "1",
            "--host-rate",
            "1",
            "--declare-gpus",
            "Z9:0",
            "--no-detect",
        ),
        "unknown GPU model 'Z9'",
    )
    # the dry-run plan prices the cheapest fitting host
    plan = d.json("up", "--gpus", "V100:2", "--ttl", "10h", "--dry-run")
    assert plan["host"] == "old-box" and plan["price_per_hour"] == "1.3" and plan["estimated_cost"] == "13.00"
    d.run("pool", "rm", "old-box", check=True)
    assert [h["name"] for h in d.json("pool", "ls")] == ["localhost"]
    assert_one_line_error(d.run("pool", "rm", "old-box"), "unknown host 'old-box'")


@pytest.mark.ansible
def test_pool_add_detects_over_ssh_and_reports_unreachable(sqlite_deepops, sshd, tmp_path):
    d = sqlite_deepops
    d.run(
        "pool",
        "add",
        "sshbox",
        "--address",
        "127.0.0.1",
        "--port",
        str(sshd.port),
        "--user",
        sshd.user,
        "--key",
        str(sshd.key),
        "--python",
        "/usr/bin/python3",
        "--gpu-rate",
        "2",
        "--host-rate",
        "0.2",
        check=True,
    )
    [box] = [h for h in d.json("pool", "ls") if h["name"] == "sshbox"]
    assert box["gpus_offered"] == [] and box["gpu_source"].startswith("detected")
    from tests.conftest import free_port

    proc = d.run(
        "pool",
        "add",
        "nowhere",
        "--address",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--gpu-rate",
        "2",
        "--host-rate",
        "0.2",
        "--key",
        str(tmp_path / "none"),
    )
    assert_one_line_error(proc, "cannot reach nowhere", "--no-detect")
    assert "nowhere" not in d.pool_file.read_text()


def test_images_ls(sqlite_deepops):
    images = {i["name"]: i for i in sqlite_deepops.json("images", "ls")}
    assert {"cpu-minimal", "pytorch"} <= set(images)
    assert all(i["onprem_lock_ok"] for i in images.values())
    assert images["pytorch"]["versions"]["torch"] == "2.13.0"


def test_doctor_reports_per_target(sqlite_deepops):
    proc = sqlite_deepops.run("doctor", "--json")
    rows = __import__("json").loads(proc.stdout)
    checks = {(r["target"], r["check"]): r for r in rows}
    assert checks[("local", "ledger")]["ok"] and checks[("onprem", "ansible-playbook")]["ok"]
    assert ("clouds", "pulumi CLI") in checks
    if not checks[("clouds", "pulumi CLI")]["ok"]:
        assert "install" in checks[("clouds", "pulumi CLI")]["detail"]
    assert proc.returncode == 0  # on-prem is usable, missing clouds do not fail it


def test_down_needs_yes_without_a_terminal(sqlite_deepops):
    from deepops_infra.config import Settings  # noqa: F401  (import check only)

    sqlite_deepops.home.mkdir(parents=True)
    ledger = sqlite_deepops.ledger()
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from deepops_infra.ledger.schema import Machine

    now = datetime.now(UTC)
    with ledger.write() as session:
        session.add(
            Machine(
                id="m-00000001",
                name="demo",
                status="ready",
                cloud="onprem",
                host="localhost",
                owner="ana",
                team="t",
                project="p",
                image="cpu-minimal",
                gpu_count=0,
                request={"gpus": "0", "ttl": 3600, "idle_timeout": 600},
                plan={"gpu_indexes": []},
                provider_refs={},
                price_per_hour=Decimal("0.05"),
                price_breakdown={},
                created_at=now,
                ready_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    assert_one_line_error(sqlite_deepops.run("down", "demo"), "--yes")
    shown = sqlite_deepops.json("show", "demo")  # a name works like the ID
    assert shown["id"] == "m-00000001" and shown["status"] == "ready"
    extended = sqlite_deepops.json("extend", "demo", "--ttl", "2h")
    assert extended["expires_at"] > shown["expires_at"]
    assert_one_line_error(sqlite_deepops.run("extend", "demo", "--ttl", "30d"), "rule max_ttl")
    table = sqlite_deepops.run("ls", check=True).stdout
    assert "m-00000001" in table and "demo" in table and "$0.05/h" in table
