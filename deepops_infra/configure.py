"""Configuring a machine with its image's pinned environment (the `configure` playbook), for cloud targets.

On-prem leases run the same host-side code directly (providers/onprem/hostcall.py), without a play.

Each provider says where the host is and where the workspace lives; the role, its variables and
the manifest it reports are the same everywhere.
"""

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from deepops_infra.errors import OperationError

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.images import Image
    from deepops_infra.pool import PoolHost
    from deepops_infra.progress import Progress


def pinned_env_vars(image: "Image", workspace: str, python: str, pip_cache: str = "") -> dict[str, Any]:
    if image.onprem is None:
        raise OperationError(f"image {image.name} has no package lock to install")
    return {
        "pinned_env_workspace": workspace,
        "pinned_env_lock_src": str(image.onprem.lock_path),
        "pinned_env_lock_sha256": image.onprem.sha256,
        "pinned_env_python": python,
        "pinned_env_pip_cache": pip_cache,
    }


def configure_host(
    settings: "Settings",
    machine_id: str,
    host: "PoolHost",
    image: "Image",
    workspace: str,
    progress: "Progress",
    pip_cache: str = "",
    extra_vars: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the configure play on one host; returns the manifest of what is installed there.
    `extra_vars`: the provider's own (the agent role's)."""
    from deepops_infra.ansible import run_playbook
    from deepops_infra.providers.onprem.envcache import EnvCacheSettings

    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    cache = EnvCacheSettings.load(settings).role_vars(settings, host)  # the machine's own environment cache
    result = run_playbook(
        settings,
        "configure",
        [host],
        pinned_env_vars(image, workspace, host.python, pip_cache) | cache | (extra_vars or {}),
        ident=f"{machine_id}-configure-{stamp}",
        progress=progress,
    )
    if not result.ok:
        raise OperationError(result.error(f"configuring {image.name} on {host.name} failed"))
    return dict(result.stats.get("deepops_manifest") or {})
