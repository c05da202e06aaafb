"""azure-mgmt-compute and azure-mgmt-monitor clients on the configured Resource Manager endpoint
(public Azure by default; sovereign clouds through azure.endpoints.resource_manager and
azure.authority_host). Credentials: DefaultAzureCredential unless one is given (tests give one)."""

from typing import Any
from urllib.parse import urlsplit

from deepops_infra.providers.azure.settings import AzureSettings

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in LOOPBACK


def _auth_policy(credential: Any, scope: str, endpoint: str) -> Any:
    """ARM's bearer policy; over plain http only to a loopback endpoint (a local proxy or a test
    server), where azure-core's https rule is relaxed. A token never goes to a remote http URL."""
    from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

    class Policy(ARMChallengeAuthenticationPolicy):
        def on_request(self, request: Any) -> None:
            if loopback_http(request.http_request.url):
                request.context.options["enforce_https"] = False
            super().on_request(request)

    return Policy(credential, scope) if loopback_http(endpoint) else ARMChallengeAuthenticationPolicy(credential, scope)


class Clients:
    def __init__(self, az: AzureSettings, credential: Any = None) -> None:
        self.az = az
        self._credential = credential
        self._cache: dict[str, Any] = {}

    @property
    def credential(self) -> Any:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            kwargs = {"authority": self.az.authority_host} if self.az.authority_host else {}
            self._credential = DefaultAzureCredential(**kwargs)
        return self._credential

    def _kwargs(self) -> dict[str, Any]:
        endpoint = self.az.resource_manager
        scope = f"{endpoint.rstrip('/')}/.default"
        return {
            "base_url": endpoint,
            "credential_scopes": [scope],
            "authentication_policy": _auth_policy(self.credential, scope, endpoint),
        }

    def compute(self) -> Any:
        if "compute" not in self._cache:
            from azure.mgmt.compute import ComputeManagementClient

            self._cache["compute"] = ComputeManagementClient(
                self.credential, self.az.require_subscription(), **self._kwargs()
            )
        return self._cache["compute"]

    def monitor(self) -> Any:
        if "monitor" not in self._cache:
            from azure.mgmt.monitor import MonitorManagementClient

            self._cache["monitor"] = MonitorManagementClient(
                self.credential, self.az.require_subscription(), **self._kwargs()
            )
        return self._cache["monitor"]

    def has_credentials(self) -> tuple[bool, str]:
        """Whether some credential source is configured (no token is fetched)."""
        import os
        import shutil

        if self._credential is not None:
            return True, "given"
        if os.environ.get("AZURE_CLIENT_ID") and (
            os.environ.get("AZURE_CLIENT_SECRET") or os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        ):
            return True, "service principal from AZURE_* variables"
        if shutil.which("az") and (os.path.expanduser("~/.azure")) and os.path.isdir(os.path.expanduser("~/.azure")):
            return True, "Azure CLI login (~/.azure)"
        if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
            return True, "managed identity"
        return False, "no Azure credentials: run `az login`, set AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/AZURE_TENANT_ID"
