"""google-cloud-compute clients and Cloud Monitoring REST calls, through the configured endpoints.

Credentials come from Application Default Credentials unless given (tests pass AnonymousCredentials).
"""

from typing import Any

from deepops_infra.providers.gcp.settings import GcpSettings


class Clients:
    def __init__(self, gcp: GcpSettings, credentials: Any = None) -> None:
        self.gcp = gcp
        self.credentials = credentials
        self._cache: dict[str, Any] = {}

    def _options(self, service: str) -> Any:
        from google.api_core.client_options import ClientOptions

        endpoint = self.gcp.endpoint(service)
        return ClientOptions(api_endpoint=endpoint) if endpoint else None

    def _make(self, key: str, factory: Any, service: str) -> Any:
        if key not in self._cache:
            self._cache[key] = factory(
                credentials=self.credentials, transport="rest", client_options=self._options(service)
            )
        return self._cache[key]

    def instances(self) -> Any:
        from google.cloud import compute_v1

        return self._make("instances", compute_v1.InstancesClient, "compute")

    def zone_operations(self) -> Any:
        """Operations are polled through this client: the SDK's own poller ignores the endpoint."""
        from google.cloud import compute_v1

        return self._make("zone_operations", compute_v1.ZoneOperationsClient, "compute")

    def images(self) -> Any:
        from google.cloud import compute_v1

        return self._make("images", compute_v1.ImagesClient, "compute")

    def get_json(self, service: str, default: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        """A plain authorized REST GET (Cloud Monitoring's Python client has no REST transport)."""
        if "session" not in self._cache:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials = self.credentials
            if credentials is None:
                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            self._cache["session"] = AuthorizedSession(credentials)
        base = (self.gcp.endpoint(service) or default).rstrip("/")
        answer = self._cache["session"].get(f"{base}{path}", params=params, timeout=30)
        answer.raise_for_status()
        return dict(answer.json())

    def has_credentials(self) -> tuple[bool, str]:
        if self.credentials is not None:
            return True, "given"
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            _, project = google.auth.default()
        except DefaultCredentialsError:
            return False, "no GCP credentials: run `gcloud auth application-default login` or set a service account"
        return True, f"application default credentials (project {project or '-'})"
