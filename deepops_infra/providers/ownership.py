"""The ownership rules every cloud applies before it acts (DESIGN: "Ownership and destructive actions").

A resource is ours only when its own tags (GCP: labels) carry `deepops-managed=true` and this
installation's ID; a companion of a machine (a disk, a NIC, a resource group) only when they also
carry that machine's ID. A ghost is confirmed gone only on the cloud's word that the thing is not
found; any other answer, or none, is "cannot tell".
"""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from deepops_infra import tags


def _same(text: str) -> str:
    return text


def carries(
    found: Mapping[str, str] | None,
    installation_id: str,
    machine: str | None = None,
    form: Callable[[str], str] = _same,
) -> bool:
    """Whether `found` (a resource's own tags) marks it as this installation's, and when `machine` is
    given, as that machine's. `form` writes keys and values the way the cloud stores them
    (tags.gcp_label_value for GCP labels)."""
    found = found or {}
    if found.get(form(tags.MANAGED)) != "true" or found.get(form(tags.INSTALLATION)) != form(installation_id):
        return False
    return machine is None or found.get(form(tags.MACHINE)) == form(machine)


def gone_on_not_found(
    read: Callable[[], object], not_found: Callable[[Exception], bool], now: datetime | None = None
) -> datetime | None:
    """A ghost's confirmation: `read()` asks the cloud for the machine's instance. Gone (now) only
    when that raises an error `not_found` recognises as the cloud's own "no such resource"; an
    answer means it exists, and any other error means the cloud could not tell (None either way)."""
    try:
        read()
    except Exception as exc:  # whatever it was, only the cloud's not-found proves anything
        return (now or datetime.now(UTC)) if not_found(exc) else None
    return None
