"""The on-prem pool: its hosts with their GPUs and leases (ls), adding one (add, with GPU
detection) and removing one (rm, refused while machines run on it). The CLI calls these in
local mode; the server's /pool routes call them for an it-admin."""

from typing import TYPE_CHECKING, Any

from deepops_infra.errors import UserError
from deepops_infra.service.access import LOCAL, Actor, need

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger


class HostBusy(UserError):
    """Machines still run on the host (409 on the API)."""


def list_hosts(
    settings: "Settings", ledger: "Ledger", actor: Actor = LOCAL, detect: bool = False
) -> list[dict[str, Any]]:
    """Every pool host with the GPUs it offers, those leased now, and where the GPU list comes
    from (declared, the last detection, or `detect` now)."""
    from sqlalchemy import select

    from deepops_infra.ledger.schema import GpuLease, HostInventory
    from deepops_infra.pool import load_pool
    from deepops_infra.providers.onprem.inventory import declared_capacity
    from deepops_infra.providers.onprem.inventory import detect as detect_gpus

    need(actor, "it-admin")
    pool = load_pool(settings.pool_path)
    fresh = detect_gpus(settings, [h for h in pool.hosts if h.detects_gpus]) if detect else {}
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
    if pool.clusters:  # scheduler clusters: rows with `kind`, their free GPUs per model from the scheduler
        from deepops_infra.providers.slurm.capacity import cluster_rows

        rows += cluster_rows(pool.clusters, settings.home / "known_hosts")
    return rows


def add_host(
    settings: "Settings", ledger: "Ledger", entry: dict[str, Any], actor: Actor = LOCAL, detect: bool = True
) -> dict[str, Any]:
    """Add a host (a pool-file entry); its GPUs are detected unless declared or `detect` is off
    (which also proves the host is reachable). Returns the host's entry and `detected`: a note."""
    from deepops_infra.pool import load_pool, parse_host_entry

    need(actor, "it-admin")
    pool = load_pool(settings.pool_path)
    name = str(entry.get("name"))
    if any(h.name == name for h in pool.hosts):
        raise UserError(f"host {name!r} is already in the pool; `deepops pool rm {name}` first")
    host = parse_host_entry(entry, settings.pool_path)
    detected = None
    if detect and host.declared_gpus is None:
        from deepops_infra.providers.onprem.inventory import detect as detect_gpus

        found = detect_gpus(settings, [host])[host.name]
        if isinstance(found, str):
            raise UserError(f"cannot reach {name}: {found}; fix the address/user/key or add --no-detect")
        settings.ensure_home()
        with ledger.write() as session:
            session.merge(found.to_cache())
        detected = f"{name}: {len(found.gpus)} GPU(s) detected" + (
            f": {', '.join(g.name for g in found.gpus)}" if found.gpus else ""
        )
    pool.hosts.append(host)
    pool.save()
    return host.to_dict() | {"detected": detected}


def remove_host(
    settings: "Settings", ledger: "Ledger", name: str, actor: Actor = LOCAL, force: bool = False
) -> dict[str, Any]:
    """Remove a host; refused (HostBusy) while machines run on it, unless `force`."""
    from sqlalchemy import func, select

    from deepops_infra.ledger.schema import Machine
    from deepops_infra.pool import load_pool

    need(actor, "it-admin")
    pool = load_pool(settings.pool_path)
    host = pool.get(name)
    with ledger.read() as session:
        live = session.scalar(
            select(func.count())
            .select_from(Machine)
            .where(Machine.cloud == "onprem", Machine.host == name, Machine.ended_at.is_(None))
        )
    if live and not force:
        raise HostBusy(f"{name} has {live} live machine(s); release them first (or --force)")
    pool.hosts.remove(host)
    if name == "localhost":
        pool.include_localhost = False
    pool.save()
    return {"removed": name, "pool": str(pool.path)}
