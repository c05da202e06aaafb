"""Providers: one module per target, all behind providers.base.Provider."""

from typing import TYPE_CHECKING

from deepops_infra.errors import UserError

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.providers.base import Provider

# cloud -> "module:Class"; a provider is imported only when a command needs it.
PROVIDERS: dict[str, str] = {
    "onprem": "deepops_infra.providers.onprem.provider:OnpremProvider",
    "aws": "deepops_infra.providers.aws.provider:AwsProvider",
    "gcp": "deepops_infra.providers.gcp.provider:GcpProvider",
    "azure": "deepops_infra.providers.azure.provider:AzureProvider",
    "slurm": "deepops_infra.providers.slurm.provider:SlurmProvider",  # the pool's clusters (planned by onprem)
}


def get_provider(cloud: str, settings: "Settings", ledger: "Ledger") -> "Provider":
    """The provider for a target; imported on demand so unused SDKs are never loaded."""
    import importlib

    if cloud == "auto":
        from deepops_infra.providers.auto import AutoProvider

        return AutoProvider(settings, ledger)  # every target the policy allows, cheapest offer first
    if cloud not in PROVIDERS:
        raise UserError(f"--cloud {cloud}: this target is not available yet; use one of: {', '.join(PROVIDERS)}")
    module, _, name = PROVIDERS[cloud].partition(":")
    return getattr(importlib.import_module(module), name)(settings, ledger)
