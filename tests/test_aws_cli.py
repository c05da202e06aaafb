"""`deepops up` on AWS through the CLI: the dry-run plan, and bad input that creates nothing."""

import json
from typing import Any

import pytest


def test_dry_run_prints_the_plan_with_hand_checked_prices(sqlite_deepops: Any) -> None:
    out = sqlite_deepops.run(
        "up",
        "--gpus",
        "H100:8",
        "--cloud",
        "aws",
        "--image",
        "cpu-minimal",
        "--ttl",
        "8h",
        "--dry-run",
        "--json",
        check=True,
    )
    plan = json.loads(out.stdout)
    assert {k: plan[k] for k in ("cloud", "region", "instance_type", "accelerator", "accelerator_count")} == {
        "cloud": "aws",
        "region": "us-east-1",
        "instance_type": "p5.48xlarge",
        "accelerator": "H100-80GB",
        "accelerator_count": 8,
    }
    assert plan["image_id"] == "ami-0f7c4a792e3fb63c8" and plan["spot"] is False
    # 55.04 + 100 GB x 0.08 / 730 = 55.050959 per hour; x 8 h = 440.407672
    assert plan["price_per_hour"] == "55.050959" and plan["estimated_cost"] == "440.41"
    assert [(a["region"], a["price_per_hour"]) for a in plan["alternatives"]] == [("us-west-2", "55.050959")]
    assert not (sqlite_deepops.home / "pulumi").exists()


def test_auto_places_on_the_cheapest_allowed_target(sqlite_deepops: Any) -> None:
    sqlite_deepops.home.mkdir(parents=True, exist_ok=True)
    # The policy names the targets `auto` may use: here the pool and AWS (other clouds are cheaper for T4).
    (sqlite_deepops.home / "config.yaml").write_text("policy:\n  default:\n    targets: [onprem, aws]\n")
    out = sqlite_deepops.run("up", "--gpus", "T4:1", "--cloud", "auto", "--spot", "--dry-run", "--json", check=True)
    plan = json.loads(out.stdout)
    # spot g4dn.xlarge: us-east-1 0.2 < us-west-2 0.2386 < eu-west-1 0.3147; + 0.010959 disk
    assert (plan["cloud"], plan["region"], plan["instance_type"], plan["price_per_hour"]) == (
        "aws",
        "us-east-1",
        "g4dn.xlarge",
        "0.210959",
    )
    assert plan["spot"] is True
    # then: us-west-2 g4dn.xlarge 0.2386, us-west-2 g4dn.2xlarge 0.295, us-east-1 g4dn.2xlarge 0.3112,
    # eu-west-1 g4dn.xlarge 0.3147 (cpu-minimal is pinned there)
    assert [(a["region"], a["instance_type"]) for a in plan["alternatives"][:4]] == [
        ("us-west-2", "g4dn.xlarge"),
        ("us-west-2", "g4dn.2xlarge"),
        ("us-east-1", "g4dn.2xlarge"),
        ("eu-west-1", "g4dn.xlarge"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "MI300X:1"], "no aws offer has MI300X"),
        (["--gpus", "H100:8", "--region", "eu-west-1"], "--region eu-west-1: no offer of 8 x H100 there"),
        (["--gpus", "T4:1", "--region", "eu-west-1", "--image", "pytorch"], "image pytorch has no pin there"),
        (["--gpus", "T4:1", "--ttl", "3d"], "rule max_ttl"),
        (["--gpus", "T4:1", "--yes"], "the `pulumi` CLI is not installed"),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(sqlite_deepops: Any, args: list[str], message: str) -> None:
    home = sqlite_deepops.home
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text("policy:\n  default:\n    max_ttl: 1d\n")
    sqlite_deepops.env["PATH"] = "/nonexistent"  # no pulumi CLI (the interpreter is run by absolute path)
    sqlite_deepops.env["HOME"] = str(home)
    result = sqlite_deepops.run("up", "--cloud", "aws", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("deepops: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = sqlite_deepops.run("ls", "--all", "--json", check=True)
    assert json.loads(listed.stdout) == []
    assert not (home / "pulumi").exists() and not (home / "keys").exists()


def test_doctor_reports_the_pulumi_cli_and_aws_credentials(sqlite_deepops: Any, tmp_path: Any) -> None:
    env = sqlite_deepops.env
    env.update(PATH="/nonexistent", HOME=str(tmp_path), AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    rows = json.loads(sqlite_deepops.run("doctor", "--json").stdout)
    by = {(r["target"], r["check"]): r for r in rows}
    assert not by[("clouds", "pulumi CLI")]["ok"] and "get.pulumi.com" in by[("clouds", "pulumi CLI")]["detail"]
    assert not by[("aws", "credentials")]["ok"] and "no AWS credentials" in by[("aws", "credentials")]["detail"]
    assert "cpu-minimal: eu-west-1, us-east-1, us-west-2; pytorch: unavailable" in by[("aws", "image pins")]["detail"]
    env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="secret")
    rows = json.loads(sqlite_deepops.run("doctor", "--json").stdout)
    creds = next(r for r in rows if (r["target"], r["check"]) == ("aws", "credentials"))
    assert creds["ok"] and creds["detail"] == "found (env)"
    assert "secret" not in json.dumps(rows)
