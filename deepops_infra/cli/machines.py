"""Machine commands: up, run, ls, show, ssh, extend, down."""

import os
import sys
from typing import Annotated, Any

import typer

from deepops_infra.cli.common import info, print_json, print_table, settings
from deepops_infra.cli.jupyter import JupyterOpt
from deepops_infra.cli.work import TaskFile, Workdir, prepare

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
Wait = Annotated[
    str | None,
    typer.Option(
        "--wait",
        help="Slurm clusters only: how long a request Slurm cannot start now may wait before it is "
        "cancelled and refused with Slurm's reason (e.g. 30s, 10m; default: the cluster's `wait:`, else 2m).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Keep = Annotated[bool, typer.Option("--keep-on-failure", help="Leave a failed machine up for debugging.")]


def _order(like: str | None, **options: Any) -> Any:
    from deepops_infra.service.machines import MachineOrder

    return MachineOrder(like=like, **options)


def _team() -> Any:
    """The team server's client when DEEPOPS_SERVER is set (team mode: every command goes through
    the server, never a silent local fallback), else None (local mode: the service in-process)."""
    from deepops_infra.cli.teammode import team_client

    return team_client()


def _service(progress: bool = False) -> Any:
    """The machines service in this process (local mode), over this user's ledger."""
    from deepops_infra.progress import make_progress
    from deepops_infra.service.machines import Machines

    return Machines(settings(), progress=make_progress(enabled=progress))


def _print_plan(plan: dict, gpus: str, image: str, json_out: bool) -> None:
    from deepops_infra.money import money, rate

    if json_out:
        print_json(plan)
    else:
        info(
            f"would lease {gpus} on {plan['host'] or plan['region']} with {image} "
            f"({plan['image_id']}) at {rate(plan['price_per_hour'])}, about {money(plan['estimated_cost'])} for the TTL"
        )


def _launch(order, yes, json_out, dry_run, keep_on_failure):  # type: ignore[no-untyped-def]
    """Local mode: plan (nothing written), confirm, record, launch; (service, machine), or
    (service, None) for a dry run."""
    service = _service(progress=True)
    planned = service.plan(order)
    request, plan = planned.request, planned.summary()
    if dry_run:
        service.admit(planned)  # refused as the real request would be (policy, budget)
        _print_plan(plan, str(request.gpus), planned.image.name, json_out)
        return service, None
    if not yes and sys.stdin.isatty() and not json_out:
        from deepops_infra.durations import format_duration
        from deepops_infra.money import money, rate

        typer.confirm(
            f"Lease {request.gpus} on {plan['host'] or plan['region']} at {rate(plan['price_per_hour'])} "
            f"(about {money(plan['estimated_cost'])} for {format_duration(request.ttl)})?",
            default=True,
            abort=True,
        )
    machine = service.record(planned)  # the real request: from here on, things are written
    return service, service.launch(machine, keep_on_failure=keep_on_failure)


def _team_launch(team, order, json_out, dry_run, keep_on_failure):  # type: ignore[no-untyped-def]
    """Team mode: the server plans, records and launches; this follows it to ready. A MachineView,
    or None for a dry run."""
    created = team.request(order, keep_on_failure=keep_on_failure, dry_run=dry_run)
    if dry_run:
        _print_plan(created["plan"], created.get("gpus") or order.gpus or "0", created["image"], json_out)
        return None
    info(f"{created['id']} requested on {created['host'] or created['region']}; the server is provisioning it")
    return team.wait_ready(created["id"], created["status"], info)


def _ready_line(m: Any) -> str:
    from deepops_infra.money import rate

    return (
        f"{m.id} is ready on {m.host or m.region}: `deepops ssh {m.id}`, "
        f"ends at {m.expires_at:%Y-%m-%d %H:%M}Z, {rate(m.price_per_hour)}"
    )


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
    wait: Wait = None,
    yes: Yes = False,
    json_out: Json = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan, create nothing.")] = False,
    keep_on_failure: Keep = False,
    task_file: TaskFile = None,
    workdir: Workdir = None,
    jupyter: JupyterOpt = False,
) -> None:
    """Get a machine: validated, planned, recorded, provisioned, configured and checked."""
    order = _order(
        like,
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
        wait=wait,
    )
    order, work = prepare(order, task_file, workdir)  # cli/work.py: validated and measured before any request
    if jupyter:
        from deepops_infra.cli.jupyter import check_image

        check_image(order)  # an image without Jupyter: refused before anything is written
    server = _team()
    if server is not None:
        m = _team_launch(server, order, json_out, dry_run, keep_on_failure)
    else:
        from deepops_infra.views import MachineView

        _, machine = _launch(order, yes, json_out, dry_run, keep_on_failure)
        m = None if machine is None else MachineView.of(machine)
    if m is None:
        return
    work.after_ready(m.id)  # the workdir pushed, the task's setup run
    opened = _open_jupyter(m.id) if jupyter else None
    if json_out:
        print_json(m.to_json() | ({"jupyter": opened.to_json()} if opened else {}))
    else:
        info(_ready_line(m))
        if opened:
            from deepops_infra.cli.jupyter import say_opened

            say_opened(opened)


def _open_jupyter(machine_id: str) -> Any:
    """`up --jupyter` once ready: the server and its local forward; a failure leaves the machine up."""
    from deepops_infra.cli.jupyter import open_jupyter
    from deepops_infra.errors import DeepopsError, OperationError

    try:
        return open_jupyter(machine_id)
    except DeepopsError as exc:
        raise OperationError(
            f"{exc}; the machine is up: `deepops jupyter {machine_id}` tries again, `deepops down {machine_id}` ends it"
        ) from None


def _brokered_runner() -> Any:
    """Team mode's way to run a command in a machine: the server-brokered session of
    `deepops ssh` (cli/connect.py); None while this installation has none."""
    try:
        from deepops_infra.cli.connect import run_remote  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    return run_remote


def run(
    command: Annotated[
        list[str] | None, typer.Argument(help="Command to run in the machine (after --; default: -f FILE's run).")
    ] = None,
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
    wait: Wait = None,
    task_file: TaskFile = None,
    workdir: Workdir = None,
) -> None:
    """Get a machine, run COMMAND in it, release it and print the cost line; exits with COMMAND's status."""
    order = _order(
        like,
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
        wait=wait,
    )
    order, work = prepare(order, task_file, workdir)  # cli/work.py: validated and measured before any request
    shown, command = " ".join(command or []) or str(work.task and work.task.run), work.command(command)
    server = _team()
    if server is not None:
        raise typer.Exit(_team_run(server, order, command, work, shown))
    import subprocess

    service, machine = _launch(order, yes=True, json_out=False, dry_run=False, keep_on_failure=False)
    provider = service.provider_for(machine.cloud)
    try:
        work.after_ready(machine.id)
        info(f"running in {machine.id}: {shown}")
        status = subprocess.run(provider.shell_command(machine, command), check=False).returncode
    finally:
        info(service.release(machine.id, "deepops run finished").cost_line)
    raise typer.Exit(status)


def _team_run(server: Any, order: Any, command: list[str], work: Any, shown: str) -> int:
    """`run` through the team server: its policy, its machine, its brokered session; released
    through it whatever happens."""
    from deepops_infra.errors import UserError

    runner = _brokered_runner()
    if runner is None:  # refused before anything is requested
        raise UserError(
            "deepops run with DEEPOPS_SERVER needs the server's brokered sessions, which this version lacks; "
            "use `deepops up`, then `deepops down` when done"
        )
    created = server.request(order, keep_on_failure=False, dry_run=False)
    mid = created["id"]
    info(f"{mid} requested on {created['host'] or created['region']}; the server is provisioning it")
    try:
        server.wait_ready(mid, created["status"], info)
        work.after_ready(mid)
        info(f"running in {mid}: {shown}")
        return int(runner(mid, command))
    finally:
        if server.get_machine(mid).ended_at is None:  # a failed launch was torn down by the server
            info(server.release(mid).cost_line)


def ls(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include machines that have ended.")] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's machines.")] = None,
    json_out: Json = False,
) -> None:
    """List machines (running ones; --all for every one)."""
    from datetime import UTC, datetime

    from deepops_infra.views import MACHINE_COLUMNS, machine_json, machine_row

    at = datetime.now(UTC)
    server = _team()
    if server is not None:
        machines = server.list_machines(include_ended=all_, owner=owner)
    else:
        machines = _service().list_machines(include_ended=all_, owner=owner, at=at)
    rows = [(m, m.cost) for m in machines]
    if json_out:
        print_json([machine_json(m, spent) for m, spent in rows])
    elif not rows:
        info("no machines" + ("" if all_ else " running; `deepops ls --all` shows ended ones"))
    else:
        print_table(MACHINE_COLUMNS, [machine_row(m, spent, at) for m, spent in rows])


def show(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    json_out: Json = False,
    spec: Annotated[bool, typer.Option("--spec", help="Print the task file that makes it again (up -f).")] = False,
) -> None:
    """Everything about one machine: manifest (exact pin, host, GPUs, versions found), price, events."""
    server = _team()
    m = server.show(machine_ref) if server is not None else _service().show(machine_ref)
    if spec:  # `deepops up -f` of it: the same image pin, GPUs and target
        from deepops_infra.taskfile import dump_spec, spec_of

        sys.stdout.write(dump_spec(spec_of(m), m.id))
        return
    data = m.source or m.detail_json()  # in team mode, the server's answer as it came
    if json_out:
        print_json(data)
        return
    from rich.console import Console

    from deepops_infra.views import show_rows

    console = Console(highlight=False)
    console.print(f"[bold]{m.id}[/] {m.name or ''}  {m.status}" + (f" ({m.status_reason})" if m.status_reason else ""))
    for key, value in show_rows(data):
        console.print(f"  {key:<20} {value}")
    if m.validation:
        for check in m.validation.get("checks", []):
            console.print(f"  check {'✓' if check['passed'] else '✗'} {check['name']}: {check['detail']}")
    console.print("  events:")
    for e in data["events"]:
        console.print(f"    {e['at']}  {e['kind']:<16} {e['from'] or ''} -> {e['to'] or ''}  {e['reason'] or ''}")


def extend(
    machine_ref: Annotated[str, typer.Argument(metavar="ID", help="Machine ID or name.")],
    ttl: Annotated[str, typer.Option("--ttl", help="How much longer, e.g. 2h (within policy).")],
    json_out: Json = False,
) -> None:
    """Push a machine's expiry back (never past the team's maximum TTL)."""
    from deepops_infra.views import machine_json

    server = _team()
    m = server.extend(machine_ref, ttl) if server is not None else _service().extend(machine_ref, ttl)
    if json_out:
        print_json(m.source or machine_json(m))
    else:
        info(f"{m.id} now ends at {m.expires_at:%Y-%m-%d %H:%M}Z")


def down(
    machine_refs: Annotated[list[str], typer.Argument(metavar="ID...", help="Machine IDs or names.")],
    yes: Yes = False,
    json_out: Json = False,
) -> None:
    """Release machines: end their processes, remove their resources, close their cost."""
    server = _team()
    if server is not None:
        release_machines(server.releasable, server.release, machine_refs, yes, json_out)
        return
    service = _service(progress=True)
    reason = "released by " + (os.environ.get("USER") or "user")
    release_machines(service.releasable, lambda mid: service.release(mid, reason), machine_refs, yes, json_out)


def release_machines(releasable: Any, release: Any, refs: list[str], yes: bool, json_out: bool) -> None:
    """`down` in either mode: every machine found and releasable before any is released; one
    failure does not stop the others (all are reported, exit 1)."""
    from deepops_infra.errors import DeepopsError, OperationError, UserError

    targets = releasable(refs)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("down needs --yes when not run from a terminal")
        typer.confirm(f"Release {', '.join(t.id for t in targets)}?", abort=True)
    results, failures = [], []
    for t in targets:
        try:
            released = release(t.id)
        except DeepopsError as exc:
            failures.append(f"{t.id}: {exc}")
            continue
        results.append(released.machine)
        from deepops_infra.cli.jupyter import stop_forward

        stop_forward(t.id)  # the local port forward of `up --jupyter`, if one runs
        if not json_out:
            info(released.cost_line)
    if json_out:
        print_json(results)
    if failures:
        raise OperationError("; ".join(failures))


def register(app: typer.Typer) -> None:
    for fn in (up, ls, show, extend, down):  # ssh: cli/connect.py
        app.command()(fn)
    app.command(context_settings={"allow_interspersed_args": False})(run)
