"""Providers: one module per target, all behind providers.base.Provider."""

from typing import TYPE_CHECKING

from deepops_infra.errors import UserError

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.providers.base import Provider

IMPLEMENTED = ("onprem",)


def get_provider(cloud: str, settings: "Settings", ledger: "Ledger") -> "Provider":
    """The provider for a target; imported on demand so unused SDKs are never loaded."""
    if cloud == "onprem":
        from deepops_infra.providers.onprem.provider import OnpremProvider

        return OnpremProvider(settings, ledger)
    if cloud == "auto":
        # Until the cloud providers land, the only target `auto` can place on is the pool.
        from deepops_infra.providers.onprem.provider import OnpremProvider

        return OnpremProvider(settings, ledger)
    raise UserError(
        f"--cloud {cloud}: this target is not available yet; use --cloud onprem (available: {', '.join(IMPLEMENTED)})"
    )
