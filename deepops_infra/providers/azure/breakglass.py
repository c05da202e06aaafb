"""Break-glass removal of an orphan Azure VM (one no Pulumi stack holds) and what its stack made.

stacks/azure puts each machine in a resource group of its own, `deepops-<machine>`, so one group
delete is the whole teardown; but a VM found in some other group, or a group someone else shares,
must not take its neighbours along. So the group goes whole only when the group itself carries this
installation's and this machine's tags, is named as the stack names it and holds no other VM.
Otherwise only the VM goes, then each companion it points at (NICs, and through them public IPs, the
NSG and the virtual network; its disks; its auto-shutdown schedule) that carries the machine's tags
itself; the rest is left and named in the note.
"""

from typing import Any

from deepops_infra import tags
from deepops_infra.errors import UserError
from deepops_infra.providers.azure import arm
from deepops_infra.providers.azure.clients import Clients
from deepops_infra.providers.ownership import carries

GROUP_PREFIX = "deepops-"  # stacks/azure: resource_group_name=deepops-<machine>
# The order companions can be removed in: a NIC first (it holds the IP, the NSG and the subnet).
ORDER = (
    "microsoft.network/networkinterfaces",
    "microsoft.network/publicipaddresses",
    "microsoft.network/networksecuritygroups",
    "microsoft.network/virtualnetworks",
    "microsoft.compute/disks",
    "microsoft.devtestlab/schedules",
)


def stack_group(machine: str) -> str:
    """The resource group stacks/azure makes for a machine."""
    return f"{GROUP_PREFIX}{machine}"


def _names(items: list[str]) -> str:
    return ", ".join(arm.name_of(i) for i in items)


def whole_group_refused(compute: Any, sub: str, group: str, machine: str | None, installation_id: str) -> str | None:
    """Why the VM's resource group may not be deleted whole (None: it may)."""
    if not machine:
        return "the VM carries no machine tag"
    if group.lower() != stack_group(machine).lower():
        return f"resource group {group} is not the one its stack names ({stack_group(machine)})"
    found = arm.get(compute, f"/subscriptions/{sub}/resourceGroups/{group}")
    if found is None or not carries(found.get("tags"), installation_id, machine):
        return f"resource group {group} is not tagged as {machine}'s"
    others = [vm.name for vm in compute.virtual_machines.list(group) if not carries(vm.tags, installation_id, machine)]
    if others:
        return f"resource group {group} also holds {', '.join(others)}"
    return None


def _ref(item: Any) -> str | None:
    return item.get("id") if isinstance(item, dict) else None


def _nic_refs(nic: dict[str, Any]) -> list[str]:
    """What a NIC points at: its public IPs, its NSG, the virtual networks of its subnets."""
    props = nic.get("properties") or {}
    found = [_ref(props.get("networkSecurityGroup"))]
    for config in props.get("ipConfigurations") or []:
        inner = config.get("properties") or {}
        found.append(_ref(inner.get("publicIPAddress")))
        subnet = _ref(inner.get("subnet"))
        found.append(subnet.rsplit("/subnets/", 1)[0] if subnet and "/subnets/" in subnet else None)
    return [f for f in found if f]


def companions(compute: Any, vm: Any, installation_id: str, machine: str) -> list[str]:
    """The IDs of what the VM points at, in removal order, read while the VM still exists (a NIC
    deleted along with its VM would take its references with it). A NIC's own references are
    followed only when the NIC is the machine's."""
    props = vm.properties
    found: list[str] = [n.id for n in (props.network_profile.network_interfaces or [])] if props.network_profile else []
    storage = props.storage_profile
    disks = [storage.os_disk, *(storage.data_disks or [])] if storage and storage.os_disk else []
    found += [d.managed_disk.id for d in disks if d.managed_disk and d.managed_disk.id]
    sub_group = vm.id.split("/providers/", 1)[0]
    found.append(f"{sub_group}/providers/Microsoft.DevTestLab/schedules/shutdown-computevm-{vm.name}")
    for nic_id in [f for f in found if arm.kind(f) == ORDER[0]]:
        nic = arm.get(compute, nic_id)
        if nic is not None and carries(nic.get("tags"), installation_id, machine):
            found += _nic_refs(nic)
    unique = list({f.lower(): f for f in found}.values())
    return sorted(unique, key=lambda f: ORDER.index(arm.kind(f)) if arm.kind(f) in ORDER else len(ORDER))


def remove_companions(compute: Any, ids: list[str], installation_id: str, machine: str | None) -> str | None:
    """Remove each companion that still exists and carries this machine's tags itself; a note of
    what was removed and what was left (not the machine's, or its removal failed)."""
    removed: list[str] = []
    kept: list[str] = []
    failed: list[str] = []
    for rid in ids:
        try:
            found = arm.get(compute, rid)
            if found is None:
                continue  # gone with the VM (a disk or NIC whose delete option says so)
            if machine is None or not carries(found.get("tags"), installation_id, machine):
                kept.append(rid)
                continue
            arm.delete(compute, rid)
            removed.append(rid)
        except Exception as exc:  # the VM is gone either way: say what is left, do not stop
            failed.append(f"{arm.name_of(rid)} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    parts = [f"also removed {_names(removed)}"] if removed else []
    if kept:
        parts.append(f"left {_names(kept)} (not tagged as {machine or 'the machine'}'s)")
    if failed:
        parts.append(f"could not remove {', '.join(failed)}")
    return "; ".join(parts) or None


def remove_vm(clients: Clients, vm_id: str, installation_id: str) -> str | None:
    """Break-glass: remove an orphan VM that carries this installation's tags, with its resource
    group when that is provably the machine's own, else with its tagged companions. Returns a note."""
    from azure.core.exceptions import ResourceNotFoundError

    compute = clients.compute()
    group, name = arm.group_of(vm_id), arm.name_of(vm_id)
    try:
        vm = compute.virtual_machines.get(group, name)
    except ResourceNotFoundError:
        raise UserError(f"{vm_id} does not exist") from None
    marks = dict(vm.tags or {})
    if not carries(marks, installation_id):
        raise UserError(
            f"{name} is not managed by this deepops installation (tags {tags.MANAGED}, {tags.INSTALLATION}); "
            "refusing to delete it"
        )
    machine = marks.get(tags.MACHINE)
    sub = clients.az.require_subscription()
    why = whole_group_refused(compute, sub, group, machine, installation_id)
    if why is None:
        arm.delete(compute, f"/subscriptions/{sub}/resourceGroups/{group}")
        return f"removed resource group {group} whole (tagged and named as {machine}'s)"
    ids = companions(compute, vm, installation_id, machine) if machine else []
    arm.delete(compute, vm.id)
    note = remove_companions(compute, ids, installation_id, machine)
    return f"kept resource group {group}: {why}" + (f"; {note}" if note else "")
