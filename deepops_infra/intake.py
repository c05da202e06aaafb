"""Turning command-line options into a validated request, before anything is written.

Everything here only reads (configuration, pool file, images, and for --like the ledger).
"""

from dataclasses import dataclass, replace
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
)

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine


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
    )


def build_request(settings: Settings, opts: Options, like: "Machine | None" = None) -> tuple[MachineRequest, Image]:
    """Validate every option and fill defaults from configuration and policy."""
    if like is not None:
        opts = like_options(opts, like)
    defaults = settings.config.defaults
    gpus = GpuSpec.parse(opts.gpus if opts.gpus is not None else "0")
    cloud = check_cloud(opts.cloud or defaults.cloud)
    team = check_label("--team", opts.team or defaults.team)
    project = check_label("--project", opts.project or defaults.project)
    owner = check_label("--owner", opts.owner or default_owner())
    policy = settings.config.policy_for(team)
    ttl = parse_ttl(opts.ttl) if opts.ttl else policy.default_ttl
    idle = parse_idle_timeout(opts.idle_timeout) if opts.idle_timeout else policy.default_idle_timeout
    image = get_image(opts.image or defaults.image)
    if image.gpu_required and gpus.count == 0:
        raise UserError(f"--image {image.name} needs a GPU; ask for one with --gpus, e.g. --gpus A100:1")
    if like is not None and like.image_pin and image.name == like.image:
        pinned = _pin_now(image, like.cloud, like.region)
        if pinned != like.image_pin:
            raise UserError(
                f"--like {like.id}: image {image.name} now pins {pinned} in {like.cloud} {like.region or ''}, "
                f"{like.id} ran {like.image_pin}; restore that pin in images/ to reproduce it"
            )
    if opts.spot and cloud == "onprem":
        raise UserError("--spot: on-prem leases are never preempted; drop --spot or use a cloud target")
    if opts.host is not None and cloud not in ("onprem", "auto"):
        raise UserError(f"--host names an on-prem pool host; it cannot be used with --cloud {cloud}")
    policy_targets = policy.targets
    if cloud in ("onprem", "auto") and (cloud == "onprem" or "onprem" in policy_targets):
        from deepops_infra.pool import load_pool

        pool = load_pool(settings.pool_path)  # a malformed pool file fails here, before any write
        if opts.host is not None:
            pool.get(opts.host)
    request = MachineRequest(
        gpus=gpus,
        cloud=cloud,
        region=opts.region,
        host=opts.host,
        image=image.name,
        spot=bool(opts.spot),
        ttl=ttl,
        idle_timeout=idle,
        disk_gb=check_disk(opts.disk),
        owner=owner,
        team=team,
        project=project,
        name=check_name(opts.name),
    )
    # `auto` places among the targets the policy allows; the other rules apply whatever it picks.
    check_static(request, policy, (policy_targets[0] if policy_targets else "auto") if cloud == "auto" else cloud)
    if like is not None and cloud == like.cloud and opts.region is None and like.region and cloud != "onprem":
        request = replace(request, region=like.region)  # the same pin means the same region
    return request, image


def _pin_now(image: Image, cloud: str, region: str | None) -> str | None:
    """The image's pin today on a target (AMI per region on AWS, the lock hash on-prem)."""
    if cloud == "aws":
        from deepops_infra.providers.aws.images import pin_for

        return pin_for(image.name, region) if region else None
    return image.pin_for(cloud)
