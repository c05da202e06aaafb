"""`deepops pool`: the on-prem hosts leases are carved from."""

from typing import Annotated, Any

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

app = typer.Typer(help="The on-prem pool (a YAML file of hosts; localhost is in it by default).", no_args_is_help=True)


def _team() -> Any:
    """The team server's client in team mode (its pool, it-admin only), else None (local files)."""
    from deepops_infra.cli.teammode import team_client

    return team_client()


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Host name in the pool.")],
    address: Annotated[str | None, typer.Option(help="Address to reach it (ssh hosts).")] = None,
    connection: Annotated[str, typer.Option(help="local or ssh.")] = "ssh",
    user: Annotated[str | None, typer.Option(help="SSH user.")] = None,
    port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    key: Annotated[str | None, typer.Option(help="SSH private key file.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value label (repeatable), e.g. region=lab-a.")] = None,
    gpu_rate: Annotated[float | None, typer.Option("--gpu-rate", help="USD per GPU-hour (required).")] = None,
    host_rate: Annotated[float | None, typer.Option("--host-rate", help="USD per host-hour (required).")] = None,
    gpu_indexes: Annotated[str | None, typer.Option("--gpu-indexes", help="Offer only these GPUs, e.g. 0,1.")] = None,
    declare_gpus: Annotated[
        str | None,
        typer.Option("--declare-gpus", help="MODEL:INDEXES where detection is impossible, e.g. A100-80GB:0,1."),
    ] = None,
    workspace_root: Annotated[str | None, typer.Option("--workspace-root", help="Where lease workspaces go.")] = None,
    python: Annotated[
        str | None, typer.Option("--python", help="The host's Python 3 (used by Ansible and for venvs).")
    ] = None,
    detect: Annotated[
        bool, typer.Option("--detect/--no-detect", help="Detect GPUs now (checks the host is reachable).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a host to the pool (its GPUs are detected unless declared)."""
    from deepops_infra.errors import UserError

    entry: dict = {"name": name, "connection": connection, "port": port}
    if address:
        entry["address"] = address
    for key_name, value in (("user", user), ("key", key), ("workspace_root", workspace_root), ("python", python)):
        if value:
            entry[key_name] = value
    if label:
        bad = [item for item in label if "=" not in item]
        if bad:
            raise UserError(f"--label: {bad[0]!r} must be key=value")
        entry["labels"] = dict(item.split("=", 1) for item in label)
    if gpu_rate is None or host_rate is None:
        raise UserError("--gpu-rate and --host-rate are required (USD per hour; on-prem time is never free)")
    entry["rates"] = {"gpu_hour": gpu_rate, "host_hour": host_rate}
    try:
        if gpu_indexes:
            entry["gpu_indexes"] = [int(i) for i in gpu_indexes.split(",")]
        if declare_gpus:
            model, _, indexes = declare_gpus.partition(":")
            entry["gpus"] = [{"index": int(i), "model": model} for i in indexes.split(",")]
    except ValueError:
        raise UserError("--gpu-indexes / --declare-gpus: indexes are numbers separated by commas, e.g. 0,1") from None
    server = _team()
    if server is not None:  # the server's pool, detected with the server's keys
        added, where = server.pool_add(entry, detect), "the team server's pool"
    else:
        from deepops_infra.service.pool import add_host

        s = settings()
        added, where = add_host(s, open_ledger(s, create=False), entry, detect=detect), str(s.pool_path)
    if added.get("detected"):
        info(added["detected"])
    if json_out:
        print_json({k: v for k, v in added.items() if k != "detected"})
    else:
        info(f"added {name} to {where}")


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="Host to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Remove even with live leases on it.")] = False,
) -> None:
    """Remove a host from the pool (refused while machines run on it)."""
    server = _team()
    if server is not None:
        server.pool_rm(name, force)
        info(f"removed {name} from the team server's pool")
        return
    from deepops_infra.service.pool import remove_host

    s = settings()
    removed = remove_host(s, open_ledger(s, create=False), name, force=force)
    info(f"removed {name} from {removed['pool']}")


@app.command("ls")
def ls(
    detect: Annotated[
        bool, typer.Option("--detect", help="Detect GPUs now instead of using the last detection.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List pool hosts with their GPUs, leases and rates."""
    server = _team()
    if server is not None:
        rows = server.pool_ls(detect)
    else:
        from deepops_infra.service.pool import list_hosts

        s = settings()
        rows = list_hosts(s, open_ledger(s, create=False), detect=detect)
    from deepops_infra.money import exact

    if json_out:
        print_json(rows)
        return
    clusters = [r for r in rows if "kind" in r]
    print_table(
        ["HOST", "CONNECTION", "GPUS", "LEASED", "RATES", "SOURCE"],
        [
            [
                r["name"],
                r["connection"] + (f" {r.get('address')}:{r.get('port')}" if r["connection"] == "ssh" else ""),
                ", ".join(f"{g['index']}:{g['name']}" for g in r["gpus_offered"]) or "none",
                ",".join(map(str, r["gpus_leased"])) or "-",
                f"{exact(r['rates']['gpu_hour'])}/GPU-h {exact(r['rates']['host_hour'])}/host-h",
                r["gpu_source"],
            ]
            for r in rows
            if "kind" not in r
        ],
    )
    if clusters:
        print_table(
            ["CLUSTER", "KIND", "PARTITIONS", "GPUS FREE", "RATES"],
            [
                [
                    r["name"],
                    r["kind"],
                    ",".join(r["partitions"]),
                    r["error"] or ", ".join(f"{m} {g['free']}/{g['total']}" for m, g in r["gpus_free"].items()),
                    f"{exact(r['rates']['gpu_hour'])}/GPU-h {exact(r['rates']['node_hour'])}/node-h",
                ]
                for r in clusters
            ],
        )
