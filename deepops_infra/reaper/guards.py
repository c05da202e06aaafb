"""What the reaper may touch: only resources tagged `deepops-managed=true` with this
installation's ID, never one tagged `deepops-protect=true`. The keys are those of
deepops_infra.tags (every provider tags with them)."""

from deepops_infra.providers.base import Resource

MANAGED, INSTALLATION, PROTECT = "deepops-managed", "deepops-installation", "deepops-protect"
OURS, UNMANAGED, OTHER_INSTALLATION, PROTECTED = "ours", "unmanaged", "other-installation", "protected"
# Resource states that mean "already gone" (EC2 lists a terminated instance for a while). A stopped
# instance is not gone: it still exists and its disks bill. Providers report it as "stopped" (GCE's
# status TERMINATED is a stopped instance, never reported as "terminated"), and no stopped state
# may ever be added here.
GONE_STATES = frozenset({"terminated", "deleted", "gone"})


def verdict(resource: Resource, installation_id: str) -> str:
    tags = resource.tags or {}
    if str(tags.get(MANAGED, "")).lower() != "true":
        return UNMANAGED
    if tags.get(INSTALLATION) != installation_id:
        return OTHER_INSTALLATION
    if str(tags.get(PROTECT, "")).lower() == "true":
        return PROTECTED
    return OURS
