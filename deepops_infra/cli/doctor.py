"""`deepops doctor`: what is set up and what is missing, per target."""

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from deepops_infra.cli.common import print_json, print_table, settings


def _cloud_rows() -> list[dict]:
    """Each registered cloud provider's own checks (Pulumi CLI once, then credentials and image pins)."""
    from deepops_infra.engine.pulumi_backend import INSTALL_HINT, pulumi_cli
    from deepops_infra.errors import DeepopsError
    from deepops_infra.providers import PROVIDERS, get_provider

    cli = pulumi_cli()
    rows = [{"target": "clouds", "check": "pulumi CLI", "ok": cli is not None, "detail": cli or INSTALL_HINT}]
    s = settings()
    for cloud in PROVIDERS:
        if cloud == "onprem":
            continue
        try:
            checks = [c for c in get_provider(cloud, s, None).doctor() if c[0] != "pulumi CLI"]  # type: ignore[arg-type]
        except DeepopsError as exc:
            checks = [("configuration", False, str(exc))]
        rows += [{"target": cloud, "check": check, "ok": ok, "detail": detail} for check, ok, detail in checks]
    return rows


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
