"""`deepops doctor`: what is set up and what is missing, per target."""

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from deepops_infra.cli.common import print_json, print_table, settings


def _cloud_rows() -> list[dict]:
    pulumi = shutil.which("pulumi")
    rows = [
        {
            "target": "clouds",
            "check": "pulumi CLI",
            "ok": pulumi is not None,
            "detail": pulumi
            or "not found: install it with `curl -fsSL https://get.pulumi.com | sh` "
            "(or your package manager), then reopen the shell",
        }
    ]
    creds = {
        "aws": bool(
            os.environ.get("AWS_ACCESS_KEY_ID")
            or os.environ.get("AWS_PROFILE")
            or Path("~/.aws/credentials").expanduser().exists()
        ),
        "gcp": bool(
            os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            or Path("~/.config/gcloud/application_default_credentials.json").expanduser().exists()
        ),
        "azure": bool(os.environ.get("AZURE_CLIENT_ID") or Path("~/.azure/azureProfile.json").expanduser().exists()),
    }
    hints = {
        "aws": "set AWS_PROFILE or run `aws configure`",
        "gcp": "run `gcloud auth application-default login`",
        "azure": "run `az login` or set AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET",
    }
    for cloud, ok in creds.items():
        if cloud == "aws":
            rows += _aws_rows()
            continue
        rows.append({"target": cloud, "check": "credentials", "ok": ok, "detail": "found" if ok else hints[cloud]})
        rows.append({"target": cloud, "check": "provider", "ok": False, "detail": "not available in this version"})
    return rows


def _aws_rows() -> list[dict]:
    """The AWS provider's own checks: credentials through boto3's chain (no network), AMI pins."""
    from deepops_infra.errors import DeepopsError

    s = settings()
    try:
        from deepops_infra.providers.aws.provider import AwsProvider

        checks = [c for c in AwsProvider(s, None).doctor() if c[0] != "pulumi CLI"]  # type: ignore[arg-type]
    except DeepopsError as exc:
        checks = [("configuration", False, str(exc))]
    return [{"target": "aws", "check": check, "ok": ok, "detail": detail} for check, ok, detail in checks]


def doctor(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check state, ledger, on-prem pool and each cloud's prerequisites; exit 1 if on-prem is unusable."""
    from deepops_infra.errors import DeepopsError

    s = settings()
    rows = [{"target": "local", "check": "DEEPOPS_HOME", "ok": True, "detail": str(s.home)}]
    try:
        from deepops_infra.cli.common import open_ledger

        ledger = open_ledger(s)
        rows.append({"target": "local", "check": "ledger", "ok": True, "detail": f"{ledger.safe_url} (migrated)"})
        from deepops_infra.providers.onprem.provider import OnpremProvider

        for check, ok, detail in OnpremProvider(s, ledger).doctor():
            rows.append({"target": "onprem", "check": check, "ok": ok, "detail": detail})
    except DeepopsError as exc:
        rows.append({"target": "local", "check": "ledger/pool", "ok": False, "detail": str(exc)})
    playbook = shutil.which("ansible-playbook") or (
        str(Path(os.sys.executable).parent / "ansible-playbook")
        if (Path(os.sys.executable).parent / "ansible-playbook").exists()
        else None
    )
    rows.append(
        {
            "target": "onprem",
            "check": "ansible-playbook",
            "ok": playbook is not None,
            "detail": playbook or "pip install ansible-core",
        }
    )
    rows += _cloud_rows()
    if json_out:
        print_json(rows)
    else:
        print_table(
            ["TARGET", "CHECK", "OK", "DETAIL"],
            [[r["target"], r["check"], "yes" if r["ok"] else "NO", r["detail"]] for r in rows],
        )
    if not all(r["ok"] for r in rows if r["target"] in ("local", "onprem")):
        raise typer.Exit(1)
