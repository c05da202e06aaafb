"""Turning command-line options into a validated request, before anything is written.

Everything here only reads (configuration, pool file, images, and for --like the ledger).
"""

import os
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Settings
from deepops_infra.errors import UserError
from deepops_infra.images import Image, get_image
from deepops_infra.policy import check_static
from deepops_infra.request import (
    GpuSpec,
    MachineRequest,
    check_cloud,
    check_disk,
    check_label,
    check_name,
    default_owner,
    parse_idle_timeout,
    parse_ttl,
    parse_wait,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.ledger.db import Ledger
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.pool import Pool, PoolHost


@dataclass
class Options:
    """What the user typed; None means "not given"."""

    gpus: str | None = None
    cloud: str | None = None
    region: str | None = None
    host: str | None = None
    image: str | None = None
    spot: bool | None = None
    ttl: str | None = None
    idle_timeout: str | None = None
    disk: int | None = None
    owner: str | None = None
    team: str | None = None
    project: str | None = None
    name: str | None = None
    image_pin: str | None = None  # a task file's (`show --spec`): refuse when the image now pins another
    wait: str | None = None  # Slurm clusters: how long a job Slurm cannot start now may wait


def like_options(opts: Options, earlier: "Machine") -> Options:
    """Fill what the user did not give from an earlier machine's request (`up --like ID`)."""
    req: dict[str, Any] = earlier.request
    return Options(
        gpus=opts.gpus or req["gpus"],
        cloud=opts.cloud or earlier.cloud,
        region=opts.region or req.get("region"),
        host=opts.host or req.get("host") or earlier.host,
        image=opts.image or earlier.image,
        spot=opts.spot if opts.spot is not None else req.get("spot"),
        ttl=opts.ttl,
        idle_timeout=opts.idle_timeout,
        disk=opts.disk or req.get("disk_gb"),
        owner=opts.owner,
        team=opts.team or earlier.team,
        project=opts.project or earlier.project,
        name=opts.name,
        image_pin=opts.image_pin,
        wait=opts.wait,
    )


def refuse_empty(opts: Options) -> None:
    """An option given with an empty value (`--ttl ''`) is a mistake, never "not given"."""
    for f in fields(opts):
        value = getattr(opts, f.name)
        if isinstance(value, str) and not value.strip():
            option = "--" + f.name.replace("_", "-")
            raise UserError(f"{option}: the value is empty; give one, or leave {option} out for the default")


def build_request(settings: Settings, opts: Options, like: "Machine | None" = None) -> tuple[MachineRequest, Image]:
    """Validate every option and fill defaults from configuration and policy."""
    refuse_empty(opts)
    if like is not None:
        opts = like_options(opts, like)
    defaults = settings.config.defaults
    gpus = GpuSpec.parse(opts.gpus if opts.gpus is not None else "0")
    cloud = check_cloud(opts.cloud or defaults.cloud)
    team = check_label("--team", opts.team or defaults.team)
    project = check_label("--project", opts.project or defaults.project)
    owner = check_label("--owner", opts.owner or default_owner())
    policy = settings.config.policy_for(team)
    ttl = parse_ttl(opts.ttl) if opts.ttl is not None else policy.default_ttl
    idle = parse_idle_timeout(opts.idle_timeout) if opts.idle_timeout is not None else policy.default_idle_timeout
    wait = parse_wait(opts.wait) if opts.wait is not None else None
    image = get_image(opts.image or defaults.image)
    if image.gpu_required and gpus.count == 0:
        raise UserError(f"--image {image.name} needs a GPU; ask for one with --gpus, e.g. --gpus A100:1")
    if like is not None and like.image_pin and image.name == like.image:
        pinned = _pin_now(settings, image, like.cloud, like.region)
        if pinned != like.image_pin:
            raise UserError(
                f"--like {like.id}: image {image.name} now pins {pinned} in {like.cloud} {like.region or ''}, "
                f"{like.id} ran {like.image_pin}; restore that pin in images/ to reproduce it"
            )
    if opts.image_pin is not None:
        check_spec_pin(settings, image, opts.image_pin, cloud, opts.region)
    if opts.spot and cloud == "onprem":
        raise UserError("--spot: on-prem leases are never preempted; drop --spot or use a cloud target")
    if opts.host is not None and cloud not in ("onprem", "auto"):
        raise UserError(f"--host names an on-prem pool host; it cannot be used with --cloud {cloud}")
    policy_targets = policy.targets
    pool = None
    if cloud in ("onprem", "auto") and (cloud == "onprem" or "onprem" in policy_targets):
        from deepops_infra.pool import load_pool

        pool = load_pool(settings.pool_path)  # a malformed pool file fails here, before any write
        if opts.host is not None and pool.cluster(opts.host) is None:  # --host: a pool host or cluster
            pool.get(opts.host)
    disk_gb = check_disk(opts.disk)
    on_cluster = pool is not None and opts.host is not None and pool.cluster(opts.host) is not None
    if pool is not None and cloud == "onprem" and disk_gb is not None and not on_cluster:
        check_disk_space(settings, pool, disk_gb, opts.host, opts.region)
    request = MachineRequest(
        gpus=gpus,
        cloud=cloud,
        region=opts.region,
        host=opts.host,
        image=image.name,
        spot=bool(opts.spot),
        ttl=ttl,
        idle_timeout=idle,
        disk_gb=disk_gb,
        owner=owner,
        team=team,
        project=project,
        name=check_name(opts.name),
        wait=wait,
    )
    # `auto` places among the targets the policy allows; the other rules apply whatever it picks.
    check_static(request, policy, (policy_targets[0] if policy_targets else "auto") if cloud == "auto" else cloud)
    if like is not None and cloud == like.cloud and opts.region is None and like.region and cloud != "onprem":
        request = replace(request, region=like.region)  # the same pin means the same region
    return request, image


def check_spec_pin(settings: Settings, image: Image, pin: str, cloud: str, region: str | None) -> None:
    """A task file's `image_pin` (from `deepops show --spec`) must be what the image pins today on
    that target, as `--like` checks: the same configuration, or a clear refusal."""
    if cloud == "auto":
        raise UserError("image_pin: give the cloud the pin is for (resources.cloud), not auto")
    pinned = _pin_now(settings, image, cloud, region)
    where = f"{cloud} {region}" if region else cloud
    if pinned is None:
        raise UserError(
            f"image_pin: image {image.name} has no pin in {where!r}; give the region the task file was made in"
        )
    if pinned != pin:
        raise UserError(
            f"image_pin: image {image.name} now pins {pinned} in {where}; "
            f"the task file asks for {pin}; restore that pin in images/ to reproduce it, or drop image_pin"
        )


def _pin_now(settings: Settings, image: Image, cloud: str, region: str | None) -> str | None:
    """The image's pin today on a target, from that target's provider: the one authority on its
    pins (an image ID per region on a cloud, the lock hash on-prem). Reading pins needs no ledger."""
    from deepops_infra.providers import get_provider

    return get_provider(cloud, settings, None).image_pin(image, region)  # type: ignore[arg-type]


def find_like(session: "Session", ref: str, scope: dict[str, str] | None = None) -> "Machine":
    """The machine `up --like REF` repeats: by ID, or by name the live one, else the latest that
    ended (names are reused once a machine has ended), among those `scope` lets the caller see
    (column: value, e.g. {"owner": name}; none: all, as in local mode)."""
    from sqlalchemy import select

    from deepops_infra.errors import NotFoundError
    from deepops_infra.ledger import quickread, store
    from deepops_infra.ledger.schema import Machine

    try:
        return store.find_machine(session, ref, within=scope)
    except NotFoundError as missing:
        if str(missing) != str(quickread.no_machine(ref)):
            raise  # a name several live machines share: the ID is needed
        visible = [getattr(Machine, column) == value for column, value in (scope or {}).items()]
        ended = select(Machine).where(Machine.name == ref, Machine.ended_at.is_not(None), *visible)
        latest = session.scalars(ended.order_by(Machine.created_at.desc(), Machine.id.desc()).limit(1)).first()
        if latest is None:
            raise
        return latest


def disk_shortfall(settings: Settings, host: "PoolHost", disk_gb: int) -> str | None:
    """Why `host` cannot hold a `disk_gb` workspace, or None when it can or nobody knows yet.

    A local host's workspace root is measured now (its nearest existing folder); a remote host is
    left to the lease play's own check, which measures it before anything is created there."""
    if host.connection != "local":
        return None
    root = Path(os.path.expanduser(host.workspace_root)) if host.workspace_root else settings.workspaces
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free_gb = shutil.disk_usage(probe).free / 1024**3
    except OSError:
        return None
    if free_gb >= disk_gb:
        return None
    return f"{host.name} has {free_gb:.1f} GB free under {root}"


def check_disk_space(settings: Settings, pool: "Pool", disk_gb: int, host: str | None, region: str | None) -> None:
    """`--disk` is refused at intake when no pool host that could take the lease has the room."""
    hosts = [pool.get(host)] if host else [h for h in pool.hosts if not region or h.labels.get("region") == region]
    short = [why for h in hosts if (why := disk_shortfall(settings, h, disk_gb))]
    if hosts and len(short) == len(hosts):
        raise UserError(f"--disk: {disk_gb} GB asked; {'; '.join(short)}; ask for less or free some space")


def admission_checks(settings: Settings, session: "Session", request: MachineRequest) -> None:
    """The rules checked against the ledger when a machine is recorded (the team's running GPUs,
    its budget), inside the recording transaction; `--dry-run` runs the same on a read."""
    from deepops_infra.costs.budgets import check_team_budget
    from deepops_infra.ledger import store
    from deepops_infra.policy import check_running

    check_running(request, settings.config.policy_for(request.team), store.running_gpus(session, request.team))
    check_team_budget(settings.config, session, request.team)


def check_admission(settings: Settings, ledger: "Ledger", request: MachineRequest) -> None:
    """`admission_checks` on a read of the ledger, for a request that is only planned (--dry-run)."""
    with ledger.read() as session:
        admission_checks(settings, session, request)
