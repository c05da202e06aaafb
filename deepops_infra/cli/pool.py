"""`deepops pool`: the on-prem hosts leases are carved from."""

from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

app = typer.Typer(help="The on-prem pool (a YAML file of hosts; localhost is in it by default).", no_args_is_help=True)


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
    from deepops_infra.pool import load_pool, parse_host_entry

    s = settings()
    pool = load_pool(s.pool_path)
    if any(h.name == name for h in pool.hosts):
        raise UserError(f"host {name!r} is already in the pool; `deepops pool rm {name}` first")
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
    host = parse_host_entry(entry, s.pool_path)
    if detect and host.declared_gpus is None:
        from deepops_infra.providers.onprem.inventory import detect as detect_gpus

        found = detect_gpus(s, [host])[host.name]
        if isinstance(found, str):
            raise UserError(f"cannot reach {name}: {found}; fix the address/user/key or add --no-detect")
        with open_ledger(s).write() as session:
            session.merge(found.to_cache())
        info(
            f"{name}: {len(found.gpus)} GPU(s) detected"
            + (f": {', '.join(g.name for g in found.gpus)}" if found.gpus else "")
        )
    pool.hosts.append(host)
    pool.save()
    if json_out:
        print_json(host.to_dict())
    else:
        info(f"added {name} to {s.pool_path}")


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="Host to remove.")],
    force: Annotated[bool, typer.Option("--force", help="Remove even with live leases on it.")] = False,
) -> None:
    """Remove a host from the pool (refused while machines run on it)."""
    from sqlalchemy import func, select

    from deepops_infra.errors import UserError
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.pool import load_pool

    s = settings()
    pool = load_pool(s.pool_path)
    host = pool.get(name)
    with open_ledger(s, create=False).read() as session:
        live = session.scalar(
            select(func.count())
            .select_from(Machine)
            .where(Machine.cloud == "onprem", Machine.host == name, Machine.ended_at.is_(None))
        )
    if live and not force:
        raise UserError(f"{name} has {live} live machine(s); release them first (or --force)")
    pool.hosts.remove(host)
    if name == "localhost":
        pool.include_localhost = False
    pool.save()
    info(f"removed {name} from {s.pool_path}")


@app.command("ls")
def ls(
    detect: Annotated[
        bool, typer.Option("--detect", help="Detect GPUs now instead of using the last detection.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List pool hosts with their GPUs, leases and rates."""
    from sqlalchemy import select

    from deepops_infra.ledger.schema import GpuLease, HostInventory
    from deepops_infra.pool import load_pool
    from deepops_infra.providers.onprem.inventory import declared_capacity
    from deepops_infra.providers.onprem.inventory import detect as detect_gpus

    s = settings()
    pool = load_pool(s.pool_path)
    ledger = open_ledger(s, create=False)
    fresh = detect_gpus(s, [h for h in pool.hosts if h.detects_gpus]) if detect else {}
    if fresh:
        with ledger.write() as session:
            for found in fresh.values():
                if not isinstance(found, str):
                    session.merge(found.to_cache())
    rows = []
    with ledger.read() as session:
        for host in pool.hosts:
            leased = sorted(
                session.scalars(
                    select(GpuLease.gpu_index).where(GpuLease.host == host.name, GpuLease.released_at.is_(None))
                )
            )
            note = None
            if host.declared_gpus is not None:
                gpus = [{"index": g.index, "name": g.name, "model": g.model} for g in declared_capacity(host).gpus]
                source = "declared"
            elif isinstance(fresh.get(host.name), str):
                gpus, source, note = [], "unreachable", fresh[host.name]
            else:
                cached = session.get(HostInventory, host.name)
                raw = cached.gpus if cached else []
                gpus = [g for g in raw if host.gpu_indexes is None or g["index"] in host.gpu_indexes]
                source = f"detected {cached.detected_at:%Y-%m-%d %H:%M}Z" if cached else "not detected yet"
            rows.append(
                host.to_dict() | {"gpus_offered": gpus, "gpus_leased": leased, "gpu_source": source, "error": note}
            )
    if json_out:
        print_json(rows)
        return
    print_table(
        ["HOST", "CONNECTION", "GPUS", "LEASED", "RATES", "SOURCE"],
        [
            [
                r["name"],
                r["connection"] + (f" {r.get('address')}:{r.get('port')}" if r["connection"] == "ssh" else ""),
                ", ".join(f"{g['index']}:{g['name']}" for g in r["gpus_offered"]) or "none",
                ",".join(map(str, r["gpus_leased"])) or "-",
                f"${r['rates']['gpu_hour']}/GPU-h ${r['rates']['host_hour']}/host-h",
                r["gpu_source"],
            ]
            for r in rows
        ],
    )
