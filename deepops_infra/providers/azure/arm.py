"""Plain Azure Resource Manager calls by resource ID, through the compute client's own pipeline (the
configured endpoint, credential and retries): reading and deleting the kinds of resource that
azure-mgmt-compute has no operations for (resource groups, network resources, schedules), and
waiting on ARM's asynchronous deletes (Location, else Azure-AsyncOperation)."""

import time
from typing import Any

from deepops_infra.errors import OperationError

# The API version each resource provider is addressed with (all GA versions ARM accepts).
API_VERSIONS = {
    "microsoft.resources/resourcegroups": "2021-04-01",
    "microsoft.compute/virtualmachines": "2024-07-01",
    "microsoft.compute/disks": "2024-03-02",
    "microsoft.network/networkinterfaces": "2024-05-01",
    "microsoft.network/publicipaddresses": "2024-05-01",
    "microsoft.network/networksecuritygroups": "2024-05-01",
    "microsoft.network/virtualnetworks": "2024-05-01",
    "microsoft.devtestlab/schedules": "2018-09-15",
}
# ARM's error codes for "there is no such resource" (a bare 404 from something else proves nothing).
NOT_FOUND_CODES = frozenset({"ResourceNotFound", "ResourceGroupNotFound", "NotFound"})
DELETE_WAIT_S = 1800


def kind(resource_id: str) -> str:
    """`microsoft.network/networkinterfaces` for a NIC's ID; resource groups are microsoft.resources."""
    parts = resource_id.strip("/").split("/")
    lower = [p.lower() for p in parts]
    if "providers" in lower and len(parts) >= lower.index("providers") + 4:
        at = lower.index("providers")
        return f"{lower[at + 1]}/{lower[at + 2]}"
    if len(parts) == 4 and lower[0] == "subscriptions" and lower[2] == "resourcegroups":
        return "microsoft.resources/resourcegroups"
    raise OperationError(f"{resource_id}: not an Azure resource ID deepops knows")


def name_of(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def group_of(resource_id: str) -> str:
    """The resource group named in a resource ID (as written there: ARM may capitalise it)."""
    parts = resource_id.split("/")
    lower = [p.lower() for p in parts]
    return parts[lower.index("resourcegroups") + 1]


def _url(resource_id: str) -> str:
    version = API_VERSIONS.get(kind(resource_id))
    if version is None:
        raise OperationError(f"{resource_id}: deepops does not remove resources of type {kind(resource_id)}")
    return f"{resource_id}?api-version={version}"


def _body(answer: Any) -> dict[str, Any]:
    try:
        found = answer.json()
    except Exception:  # an empty or non-JSON body
        return {}
    return found if isinstance(found, dict) else {}


def not_found(status: int, body: dict[str, Any]) -> bool:
    """ARM's own not-found: 404 with a ResourceNotFound-like error code."""
    code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
    return status == 404 and code in NOT_FOUND_CODES


def _failed(what: str, answer: Any) -> OperationError:
    error = _body(answer).get("error") or {}
    detail = error.get("message") if isinstance(error, dict) else None
    return OperationError(f"{what}: HTTP {answer.status_code}{f': {detail}' if detail else ''}")


def get(compute: Any, resource_id: str) -> dict[str, Any] | None:
    """The resource's ARM JSON (with its tags), or None when ARM says there is no such resource."""
    from azure.core.rest import HttpRequest

    answer = compute.send_request(HttpRequest("GET", _url(resource_id)))
    if answer.status_code == 200:
        return _body(answer)
    if not_found(answer.status_code, _body(answer)):
        return None
    raise _failed(f"reading {resource_id}", answer)


def delete(compute: Any, resource_id: str, timeout_s: float = DELETE_WAIT_S) -> None:
    """Delete one resource and wait until ARM reports the delete done (gone already counts as done)."""
    from azure.core.rest import HttpRequest

    answer = compute.send_request(HttpRequest("DELETE", _url(resource_id)))
    if answer.status_code in (200, 204) or answer.status_code == 404:
        return
    if answer.status_code not in (201, 202):
        raise _failed(f"deleting {resource_id}", answer)
    _wait(compute, answer, f"deleting {name_of(resource_id)}", timeout_s)


def _wait(compute: Any, answer: Any, what: str, timeout_s: float) -> None:
    """Poll Location (202 while running; 200/204 done) or, without one, Azure-AsyncOperation
    (a status document: InProgress, Succeeded, Failed, Canceled)."""
    from azure.core.rest import HttpRequest

    location = answer.headers.get("Location")
    status_url = None if location else answer.headers.get("Azure-AsyncOperation")
    if not location and not status_url:
        raise OperationError(f"{what}: ARM accepted the delete but named nothing to wait on")
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            raise OperationError(f"{what}: not done after {timeout_s:.0f}s")
        time.sleep(min(float(answer.headers.get("Retry-After") or 5), 60))
        answer = compute.send_request(HttpRequest("GET", location or status_url))
        if location and answer.status_code in (200, 204, 404):
            return  # 404: the operation's result is gone with the resource
        if answer.status_code >= 400:
            raise _failed(what, answer)
        if location:
            continue
        status = str(_body(answer).get("status") or "InProgress")
        if status == "Succeeded":
            return
        if status in ("Failed", "Canceled"):
            raise _failed(f"{what} ({status.lower()})", answer)
