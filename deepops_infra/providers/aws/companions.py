"""What a machine's stack (stacks/aws) makes beside its instance, and its break-glass removal.

A security group, a key pair and, with agent metrics, an IAM role (with one inline policy) and an
instance profile, each named deepops-<machine> and carrying the DESIGN tags. A Pulumi destroy
removes them; a break-glass terminate of an orphan instance (readpath.terminate) does not, and a
failed destroy may leave some. Here: removing them right after such a terminate, and finding the
ones whose instance is gone for the reaper's sweep. Only what carries this installation's tags, the
machine's tag and the machine's name is ever listed or removed.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from deepops_infra import tags
from deepops_infra.errors import OperationError, UserError
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.readpath import _tags
from deepops_infra.providers.base import Resource, ResourceBusy

COMPANION_PREFIX = "deepops-"  # stacks/aws names each companion deepops-<machine>
NOT_FOUND = frozenset({"InvalidGroup.NotFound", "InvalidKeyPair.NotFound", "NoSuchEntity"})


def kind_of(resource_id: str) -> str:
    """What an AWS resource ID of deepops names: instance, security-group, key-pair, instance-profile or role."""
    for prefix, kind in (("i-", "instance"), ("sg-", "security-group"), ("key-", "key-pair")):
        if resource_id.startswith(prefix):
            return kind
    for marker, kind in ((":instance-profile/", "instance-profile"), (":role/", "role")):
        if resource_id.startswith("arn:") and marker in resource_id:
            return kind
    raise UserError(f"{resource_id}: not an AWS resource deepops makes")


def _companion_of(tagged: dict[str, str], name: str, installation_id: str, machine: str | None = None) -> str | None:
    """The machine a companion belongs to when it is one of this installation's (its DESIGN tags, and
    named deepops-<its machine tag> as stacks/aws names it), else None. `machine`: only that one."""
    mid = tagged.get(tags.MACHINE)
    if not mid or tagged.get(tags.MANAGED) != "true" or tagged.get(tags.INSTALLATION) != installation_id:
        return None
    if name != f"{COMPANION_PREFIX}{mid}" or (machine is not None and mid != machine):
        return None
    return mid


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _failed(what: str, exc: Exception) -> OperationError:
    message = getattr(exc, "response", {}).get("Error", {}).get("Message") or str(exc)
    return OperationError(f"{what}: {message}")


def _iam_get(iam: Any, kind: str, name: str) -> dict[str, Any] | None:
    """An instance profile or role by name with its tags (IAM's listings leave tags out); None when absent."""
    from botocore.exceptions import ClientError

    try:
        if kind == "role":
            return dict(iam.get_role(RoleName=name)["Role"])
        return dict(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"])
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            return None
        raise _failed(f"reading {kind} {name}", exc) from None


def _ec2_filters(installation_id: str, machine: str | None) -> list[dict[str, Any]]:
    filters = [
        {"Name": f"tag:{tags.MANAGED}", "Values": ["true"]},
        {"Name": f"tag:{tags.INSTALLATION}", "Values": [installation_id]},
    ]
    if machine is not None:
        filters.append({"Name": f"tag:{tags.MACHINE}", "Values": [machine]})
    return filters


def _resource(rid: str, mid: str, tagged: dict[str, str], location: str | None) -> Resource:
    return Resource(cloud="aws", machine_id=mid, resource_id=rid, state="exists", tags=tagged, location=location)


def companions(
    clients: Clients,
    regions: Iterable[str],
    installation_id: str,
    iam_region: str | None,
    skip: Iterable[str] = (),
) -> list[Resource]:
    """The instance profiles, roles, key pairs and security groups (in that order: the order they can be
    removed in) that stacks/aws made for machines not in `skip`, of this installation only.

    EC2 is asked per region with server-side tag filters (one paginated call per kind); IAM has no
    tag filter, so its listings are paginated once and only names deepops-<machine> of machines not
    in `skip` have their tags read. `iam_region` None: IAM is not looked at (aws.agent_metrics off).
    """
    skipped = set(skip)
    found: list[Resource] = []
    if iam_region is not None:
        iam = clients.client("iam", iam_region)
        for kind, listing, key, name_key in (
            ("instance-profile", "list_instance_profiles", "InstanceProfiles", "InstanceProfileName"),
            ("role", "list_roles", "Roles", "RoleName"),
        ):
            for page in iam.get_paginator(listing).paginate(PaginationConfig={"PageSize": 1000}):
                for listed in page.get(key, []):
                    name = listed[name_key]
                    if not name.startswith(COMPANION_PREFIX) or name[len(COMPANION_PREFIX) :] in skipped:
                        continue
                    item = _iam_get(iam, kind, name)
                    if item is None:
                        continue
                    tagged = _tags(item)
                    if mid := _companion_of(tagged, name, installation_id):
                        found.append(_resource(item["Arn"], mid, tagged, None))
    keys: list[Resource] = []
    groups: list[Resource] = []
    for region in regions:
        ec2 = clients.ec2(region)
        for pair in ec2.describe_key_pairs(Filters=_ec2_filters(installation_id, None)).get("KeyPairs", []):
            tagged = _tags(pair)
            if (mid := _companion_of(tagged, pair["KeyName"], installation_id)) and mid not in skipped:
                keys.append(_resource(pair["KeyPairId"], mid, tagged, region))
        paginator = ec2.get_paginator("describe_security_groups")
        for page in paginator.paginate(Filters=_ec2_filters(installation_id, None)):
            for group in page.get("SecurityGroups", []):
                tagged = _tags(group)
                if (mid := _companion_of(tagged, group["GroupName"], installation_id)) and mid not in skipped:
                    groups.append(_resource(group["GroupId"], mid, tagged, region))
    return found + keys + groups


@contextmanager
def _removing(what: str, busy: str | None = None) -> Iterator[None]:
    """One removal's AWS errors: already gone counts as removed; in use (DependencyViolation) is
    ResourceBusy when `busy` says by what; anything else fails the removal with AWS's message."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as exc:
        if busy is not None and _code(exc) == "DependencyViolation":
            raise ResourceBusy(f"{what} is still in use by {busy}") from None
        if _code(exc) not in NOT_FOUND:
            raise _failed(f"deleting {what}", exc) from None


def _delete_security_group(ec2: Any, group_id: str) -> None:
    with _removing(group_id, busy="a network interface (its instance's)"):
        ec2.delete_security_group(GroupId=group_id)


def _delete_key_pair(ec2: Any, name: str) -> None:
    with _removing(f"key pair {name}"):
        ec2.delete_key_pair(KeyName=name)


def _delete_instance_profile(iam: Any, profile: dict[str, Any]) -> None:
    """Take its roles out of it (the profile is ours; the roles stay), then delete it."""
    name = profile["InstanceProfileName"]
    with _removing(f"instance profile {name}"):
        for role in profile.get("Roles", []):
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
        iam.delete_instance_profile(InstanceProfileName=name)


def _delete_role(iam: Any, name: str) -> None:
    """Its inline policies, its managed policies' attachments, then the role. A role still in an
    instance profile waits for that profile's removal (listed, and removed, before it)."""
    with _removing(f"role {name}"):
        profiles = iam.list_instance_profiles_for_role(RoleName=name).get("InstanceProfiles", [])
        if profiles:
            names = ", ".join(p["InstanceProfileName"] for p in profiles)
            raise ResourceBusy(f"role {name} is still in instance profile {names}")
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy in page.get("PolicyNames", []):
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name):
            for policy in page.get("AttachedPolicies", []):
                iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=name)


def _delete_iam(iam: Any, kind: str, item: dict[str, Any]) -> None:
    if kind == "role":
        _delete_role(iam, item["RoleName"])
    else:
        _delete_instance_profile(iam, item)


def _refuse(resource_id: str) -> UserError:
    return UserError(
        f"{resource_id} is not a companion of this deepops installation's machine (tags {tags.MANAGED}, "
        f"{tags.INSTALLATION}, {tags.MACHINE}, name deepops-<machine>); refusing to delete it"
    )


def remove(clients: Clients, resource: Resource, installation_id: str, iam_region: str) -> None:
    """Break-glass removal of one leftover (companions()), read again first: only if it still carries
    this installation's tags and its machine's. Gone already is done; a security group in use, or a
    role still in an instance profile, raises ResourceBusy (a later cycle)."""
    from botocore.exceptions import ClientError

    rid, kind, machine = resource.resource_id, kind_of(resource.resource_id), resource.machine_id
    if kind in ("instance-profile", "role"):
        iam = clients.client("iam", iam_region)
        name = rid.rsplit("/", 1)[-1]
        item = _iam_get(iam, kind, name)
        if item is None:
            return
        if item.get("Arn") != rid or not _companion_of(_tags(item), name, installation_id, machine):
            raise _refuse(rid)
        _delete_iam(iam, kind, item)
        return
    if kind == "instance":
        raise UserError(f"{rid}: an instance is terminated (terminate()), not removed as a leftover")
    ec2 = clients.ec2(resource.location or "")
    try:
        if kind == "security-group":
            listed = ec2.describe_security_groups(GroupIds=[rid])["SecurityGroups"]
        else:
            listed = ec2.describe_key_pairs(Filters=[{"Name": "key-pair-id", "Values": [rid]}])["KeyPairs"]
    except ClientError as exc:
        if _code(exc) in NOT_FOUND:
            return
        raise _failed(f"reading {rid}", exc) from None
    if not listed:
        return
    name = listed[0]["GroupName" if kind == "security-group" else "KeyName"]
    if not _companion_of(_tags(listed[0]), name, installation_id, machine):
        raise _refuse(rid)
    if kind == "security-group":
        _delete_security_group(ec2, rid)
    else:
        _delete_key_pair(ec2, name)


def remove_companions(
    clients: Clients, region: str, machine: str, installation_id: str, iam_region: str | None
) -> str | None:
    """After a break-glass terminate of `machine`'s instance: remove what its stack made beside it in
    `region`, found by this installation's tags and the machine's (key pair, instance profile, role,
    then the security group). Nothing here waits for the instance: a group it still uses, and anything
    whose removal failed, stays for the reaper's sweep of leftovers on a later cycle. A note of both."""
    removed: list[str] = []
    left: list[str] = []

    def attempt(what: str, step: Callable[[], object]) -> None:
        try:
            if step() is not False:
                removed.append(what)
        except ResourceBusy:
            left.append(f"{what} (in use)")
        except Exception as exc:  # the instance is ending either way; the sweep tries again
            left.append(f"{what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")

    ec2 = clients.ec2(region)
    filters = _ec2_filters(installation_id, machine)
    try:
        pairs = ec2.describe_key_pairs(Filters=filters).get("KeyPairs", [])
        groups = ec2.describe_security_groups(Filters=filters).get("SecurityGroups", [])
    except Exception as exc:  # as above
        return f"companions not listed ({type(exc).__name__}: {exc}): left for a later cycle"
    for pair in pairs:
        if _companion_of(_tags(pair), pair["KeyName"], installation_id, machine):
            attempt(pair["KeyPairId"], partial(_delete_key_pair, ec2, pair["KeyName"]))
    if iam_region is not None:
        iam = clients.client("iam", iam_region)
        name = f"{COMPANION_PREFIX}{machine}"
        for kind in ("instance-profile", "role"):
            attempt(f"{kind} {name}", partial(_remove_iam, iam, kind, name, installation_id, machine))
    for group in groups:
        if _companion_of(_tags(group), group["GroupName"], installation_id, machine):
            attempt(group["GroupId"], partial(_delete_security_group, ec2, group["GroupId"]))
    parts = [f"also removed {', '.join(removed)}"] if removed else []
    if left:
        parts.append(f"left for a later cycle: {', '.join(left)}")
    return "; ".join(parts) or None


def _remove_iam(iam: Any, kind: str, name: str, installation_id: str, machine: str) -> bool:
    """Remove the machine's instance profile or role when it exists and is ours; False when there is none
    (a look-alike without the tags is left alone)."""
    item = _iam_get(iam, kind, name)
    if item is None or not _companion_of(_tags(item), name, installation_id, machine):
        return False
    _delete_iam(iam, kind, item)
    return True
