"""Machine commands: up, run, ls, show, ssh, extend, down."""

import os
import sys
from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

Gpus = Annotated[
    str | None, typer.Option("--gpus", help="MODEL:COUNT (A100:8), MODEL for one (H100), or 0 for CPU only.")
]
Cloud = Annotated[str | None, typer.Option("--cloud", help="onprem, aws, gcp, azure or auto (cheapest fit).")]
Region = Annotated[
    str | None, typer.Option("--region", help="Cloud region; on-prem: the `region` label of pool hosts.")
]
Host = Annotated[
    str | None, typer.Option("--host", help="On-prem pool host to lease from (default: cheapest that fits).")
]
Image = Annotated[str | None, typer.Option("--image", help="Image name from images/ (default: cpu-minimal).")]
Spot = Annotated[bool | None, typer.Option("--spot/--on-demand", help="Spot capacity (clouds only).")]
Ttl = Annotated[
    str | None, typer.Option("--ttl", help="Lifetime once ready: 30m, 8h, 2d (default and maximum: policy).")
]
Idle = Annotated[str | None, typer.Option("--idle-timeout", help="End the machine after this long idle (e.g. 30m).")]
Disk = Annotated[int | None, typer.Option("--disk", help="Disk in GB (on-prem: free space required).")]
Owner = Annotated[str | None, typer.Option("--owner", help="Who the machine is for (default: your OS user).")]
Team = Annotated[str | None, typer.Option("--team", help="Team billed and whose policy applies.")]
Project = Annotated[str | None, typer.Option("--project", help="Project billed.")]
Name = Annotated[str | None, typer.Option("--name", help="A name to use instead of the ID.")]
Like = Annotated[
    str | None,
    typer.Option("--like", help="Same image pin, GPUs and target as an earlier machine (ID, or name: the latest)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Keep = Annotated[bool, typer.Option("--keep-on-failure", help="Leave a failed machine up for debugging.")]


def _options(**kwargs):  # type: ignore[no-untyped-def]
    from deepops_infra.intake import Options

    return Options(**kwargs)


def _prepare(opts, like_ref):  # type: ignore[no-untyped-def]
    """Validate, then plan; nothing is written before this returns."""
    from deepops_infra.intake import build_request, find_like
    from deepops_infra.providers import get_provider

    s = settings()
    like, ledger = None, None
    if like_ref:
        ledger = open_ledger(s, create=False)
        with ledger.read() as session:
            like = find_like(session, like_ref)  # an ID, or a name: the live or latest ended one
    request, image = build_request(s, opts, like)
    ledger = ledger or open_ledger(s, create=False)  # made by the first write (the machine's record)
    provider = get_provider(request.cloud, s, ledger)
    plans = provider.plan(request, image)
    return s, ledger, provider, request, image, plans


def _plan_json(request, plans) -> dict:  # type: ignore[no-untyped-def]
    best = plans[0]
    hours = request.ttl.total_seconds() / 3600
    from decimal import Decimal

    estimate = (best.price.per_hour * Decimal(str(hours))).quantize(Decimal("0.01"))
    return best.to_json() | {
        "spot": request.spot,
        "ttl_seconds": int(request.ttl.total_seconds()),
        "estimated_cost": str(estimate),
        "alternatives": [p.to_json() for p in plans[1:6]],
    }


def _launch(opts, like_ref, yes, json_out, dry_run, keep_on_failure):  # type: ignore[no-untyped-def]
    from deepops_infra.intake import check_admission
    from deepops_infra.lifecycle import Lifecycle
    from deepops_infra.progress import make_progress

    s, ledger, provider, request, image, plans = _prepare(opts, like_ref)
    plan = _plan_json(request, plans)
    if dry_run:
        check_admission(s, ledger, request)  # refused as the real request would be (policy, budget)
        if json_out:
            print_json(plan)
        else:
            info(
                f"would lease {request.gpus} on {plan['host'] or plan['region']} with {image.name} "
                f"({plan['image_id']}) at ${plan['price_per_hour']}/h, about ${plan['estimated_cost']} for the TTL"
            )
        return None, None
    if not yes and sys.stdin.isatty() and not json_out:
        typer.confirm(
            f"Lease {request.gpus} on {plan['host'] or plan['region']} at ${plan['price_per_hour']}/h "
            f"(about ${plan['estimated_cost']} for {request.ttl})?",
            default=True,
            abort=True,
        )
    s.ensure_home()  # the real request: from here on, things are written
    lifecycle = Lifecycle(s, ledger, provider, make_progress(enabled=True))
    machine = lifecycle.record(request, image, plans)
    lifecycle.launch(machine, image, keep_on_failure=keep_on_failure)
    return lifecycle, machine


def up(
    gpus: Gpus = None,
    cloud: Cloud = None,
    region: Region = None,
    host: Host = None,
    image: Image = None,
    spot: Spot = None,
    ttl: Ttl = None,
    idle_timeout: Idle = None,
    disk: Disk = None,
    owner: Owner = None,
    team: Team = None,
    project: Project = None,
    name: Name = None,
    like: Like = None,
    yes: Yes = False,
    json_out: Json = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan, create nothing.")] = False,
    keep_on_failure: Keep = False,
) -> None:
    """Get a machine: validated, planned, recorded, provisioned, configured and checked."""
    opts = _options(
        gpus=gpus,
        cloud=cloud,
        region=region,
        host=host,
        image=image,
        spot=spot,
        ttl=ttl,
        idle_timeout=idle_timeout,
        disk=disk,
        owner=owner,
        team=team,
        project=project,
        name=name,
    )
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.up(opts.__dict__, like, keep_on_failure, json_out, dry_run)
    _, machine = _launch(opts, like, yes, json_out, dry_run, keep_on_failure)
    if machine is None:
        return
    from deepops_infra.views import machine_json

    if json_out:
        print_json(machine_json(machine))
    else:
        info(
            f"{machine.id} is ready on {machine.host or machine.region}: `deepops ssh {machine.id}`, "
            f"ends at {machine.expires_at:%Y-%m-%d %H:%M}Z, ${machine.price_per_hour}/h"
        )


def run(
    command: Annotated[list[str], typer.Argument(help="Command to run in the machine (after --).")],
    gpus: Gpus = None,
    cloud: Cloud = None,
    region: Region = None,
    host: Host = None,
    image: Image = None,
    ttl: Ttl = None,
    idle_timeout: Idle = None,
    disk: Disk = None,
    owner: Owner = None,
    team: Team = None,
    project: Project = None,
    name: Name = None,
    like: Like = None,
) -> None:
    """Get a machine, run COMMAND in it, release it and print the cost line; exits with COMMAND's status."""
    import subprocess

    from deepops_infra.lifecycle import cost_line
    from deepops_infra.providers.base import Provider

    opts = _options(
        gpus=gpus,
        cloud=cloud,
        region=region,
        host=host,
        image=image,
        spot=None,
        ttl=ttl,
        idle_timeout=idle_timeout,
        disk=disk,
        owner=owner,
        team=team,
        project=project,
        name=name,
    )
    lifecycle, machine = _launch(opts, like, yes=True, json_out=False, dry_run=False, keep_on_failure=False)
    provider: Provider = lifecycle.provider
    try:
        info(f"running in {machine.id}: {' '.join(command)}")
        status = subprocess.run(provider.shell_command(machine, command), check=False).returncode
    finally:
        ended = lifecycle.down(machine, "deepops run finished")
        info(cost_line(ended))
    raise typer.Exit(status)


def ls(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include machines that have ended.")] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's machines.")] = None,
    json_out: Json = False,
) -> None:
    """List machines (running ones; --all for every one)."""
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.ls(all_, owner, json_out)
    from datetime import UTC, datetime

    from deepops_infra.ledger import quickread
    from deepops_infra.views import MACHINE_COLUMNS, machine_json, machine_row

    s = settings()
    if s.ledger_url.startswith("sqlite:///") and not os.path.exists(s.ledger_url.removeprefix("sqlite:///")):
        print_json([]) if json_out else info("no machines yet; start one with `deepops up`")
        return
    at = datetime.now(UTC)
    rows = quickread.list_machines(s.ledger_url, all_, owner, at)
    if rows is None:  # a schema to migrate, or a driver the quick path does not speak
        from deepops_infra.ledger import store

        with open_ledger(s, create=False).read() as session:
            machines = store.list_machines(session, include_ended=all_, owner=owner)
            spent = store.costs(session, [m.id for m in machines], at)
        rows = [(m, spent[m.id]) for m in machines]
    if json_out:
        print_json([machine_json(m, spent) for m, spent in rows])
    elif not rows:
        info("no machines" + ("" if all_ else " running; `deepops ls --all` shows ended ones"))
    else:
        print_table(MACHINE_COLUMNS, [machine_row(m, spent, at) for m, spent in rows])


def show(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")], json_out: Json = False
) -> None:
    """Everything about one machine: manifest (exact pin, host, GPUs, versions found), price, events."""
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.show(machine_ref, json_out)
    from deepops_infra.ledger import store
    from deepops_infra.views import show_json

    s = settings()
    with open_ledger(s, create=False).read() as session:
        m = store.find_machine(session, machine_ref)
        spent = store.costs(session, [m.id])[m.id]
        data = show_json(m, spent, store.events(session, m.id))
    if json_out:
        print_json(data)
        return
    from rich.console import Console

    console = Console(highlight=False)
    manifest = m.manifest or {}
    packages = manifest.get("packages") or {}
    console.print(f"[bold]{m.id}[/] {m.name or ''}  {m.status}" + (f" ({m.status_reason})" if m.status_reason else ""))
    rows = [
        ("owner/team/project", f"{m.owner} / {m.team} / {m.project}"),
        ("target", f"{m.cloud} {m.host or m.region or ''}"),
        ("gpus", f"{m.request.get('gpus')} indexes {m.plan.get('gpu_indexes')}"),
        ("image", f"{m.image} pinned {m.image_pin}"),
        ("price (frozen)", f"${m.price_per_hour}/h {m.price_breakdown}"),
        ("cost so far", f"${spent}"),
        ("created / ready", f"{data['created_at']} / {data['ready_at']}"),
        ("expires / ended", f"{data['expires_at']} / {data['ended_at']}"),
        ("workspace", str((m.provider_refs or {}).get("workspace"))),
        ("driver", str(manifest.get("driver_version"))),
        ("python", str(manifest.get("python"))),
        ("packages", ", ".join(f"{k}=={v}" for k, v in packages.items()) or "-"),
    ]
    for key, value in rows:
        console.print(f"  {key:<20} {value}")
    if m.validation:
        for check in m.validation.get("checks", []):
            console.print(f"  check {'✓' if check['passed'] else '✗'} {check['name']}: {check['detail']}")
    console.print("  events:")
    for e in data["events"]:
        console.print(f"    {e['at']}  {e['kind']:<16} {e['from'] or ''} -> {e['to'] or ''}  {e['reason'] or ''}")


def ssh(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command to run (after --).")] = None,
) -> None:
    """Open a shell in the machine, or run `-- CMD` there and exit with its status."""
    from deepops_infra.ledger import store
    from deepops_infra.providers import get_provider

    s = settings()
    ledger = open_ledger(s, create=False)
    with ledger.read() as session:
        m = store.find_machine(session, machine_ref)
    if m.ended_at is not None:
        from deepops_infra.errors import UserError

        raise UserError(f"{m.id} is {m.status}; only a running machine has a shell")
    argv = get_provider(m.cloud, s, ledger).shell_command(m, command or None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def extend(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    ttl: Annotated[str, typer.Option("--ttl", help="How much longer, e.g. 2h (within policy).")],
    json_out: Json = False,
) -> None:
    """Push a machine's expiry back (never past the team's maximum TTL)."""
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.extend(machine_ref, ttl, json_out)
    from deepops_infra.ledger import store
    from deepops_infra.lifecycle import extend as extend_machine
    from deepops_infra.request import parse_ttl
    from deepops_infra.views import machine_json

    delta = parse_ttl(ttl)
    s = settings()
    ledger = open_ledger(s, create=False)
    with ledger.read() as session:
        store.find_machine(session, machine_ref)  # an unknown machine is refused before any write
    m = extend_machine(s, ledger, machine_ref, delta)
    if json_out:
        print_json(machine_json(m))
    else:
        info(f"{m.id} now ends at {m.expires_at:%Y-%m-%d %H:%M}Z")


def down(
    machine_refs: Annotated[list[str], typer.Argument(metavar="ID...", help="Machine IDs or names.")],
    yes: Yes = False,
    json_out: Json = False,
) -> None:
    """Release machines: end their processes, remove their resources, close their cost."""
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.down(machine_refs, yes, json_out)
    from deepops_infra.errors import DeepopsError, UserError
    from deepops_infra.ledger import store
    from deepops_infra.lifecycle import Lifecycle, cost_line
    from deepops_infra.progress import make_progress
    from deepops_infra.providers import get_provider
    from deepops_infra.views import machine_json

    s = settings()
    ledger = open_ledger(s, create=False)
    with ledger.read() as session:
        machines = [store.find_machine(session, ref) for ref in machine_refs]
    for m in machines:
        if m.ended_at is not None:
            raise UserError(f"{m.id} already ended ({m.status})")
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("down needs --yes when not run from a terminal")
        typer.confirm(f"Release {', '.join(m.id for m in machines)}?", abort=True)
    progress = make_progress(enabled=True)
    results, failures = [], []
    for m in machines:
        lifecycle = Lifecycle(s, ledger, get_provider(m.cloud, s, ledger), progress)
        try:
            ended = lifecycle.down(m, "released by " + (os.environ.get("USER") or "user"))
        except DeepopsError as exc:
            failures.append(f"{m.id}: {exc}")
            continue
        results.append(machine_json(ended.machine, ended.cost))
        if not json_out:
            info(cost_line(ended))
    if json_out:
        print_json(results)
    if failures:
        from deepops_infra.errors import OperationError

        raise OperationError("; ".join(failures))


def register(app: typer.Typer) -> None:
    for fn in (up, ls, show, ssh, extend, down):
        app.command()(fn)
    app.command(context_settings={"allow_interspersed_args": False})(run)
