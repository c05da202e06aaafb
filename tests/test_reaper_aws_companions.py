"""What a machine's stack makes beside its instance (security group, key pair, IAM role with its
policies, instance profile): removed with a break-glass terminate of an orphan instance, and swept
once their instance is gone; against a moto server. Another installation's, untagged look-alikes
and a live machine's are never touched; a dry run changes nothing; a group still in use waits for
a later cycle without failing one. The reaper's generic handling of leftovers, on the fake provider."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Event, Machine, ReaperAction
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.base import Resource, ResourceBusy
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.reaper_fakes import FakeProvider, add_machine, settings_for
from tests.test_aws_readpath import AMIS, moto_url  # noqa: F401  (fixture)
from tests.test_reaper_aws import REGION, _setup, aws  # noqa: F401  (fixture)

ASSUME = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)
METRICS = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*"}]}
)


def design_tags(installation: str, machine: str) -> dict[str, str]:
    return {"deepops-managed": "true", "deepops-installation": installation, "deepops-machine": machine}


def stack(clients: Clients, machine: str, tags: dict[str, str], *, instance: bool = True) -> dict[str, str]:
    """What stacks/aws makes for one machine (names deepops-<machine>, `tags` on everything taggable)."""
    ec2, iam = clients.ec2(REGION), clients.client("iam", REGION)
    name = f"deepops-{machine}"
    listed = [{"Key": k, "Value": v} for k, v in tags.items()]

    def spec(kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": listed}] if listed else []

    made = {
        "sg": ec2.create_security_group(GroupName=name, Description=name, TagSpecifications=spec("security-group"))[
            "GroupId"
        ],
        "key": ec2.create_key_pair(KeyName=name, TagSpecifications=spec("key-pair"))["KeyPairId"],
        "role": iam.create_role(RoleName=name, AssumeRolePolicyDocument=ASSUME, **({"Tags": listed} if listed else {}))[
            "Role"
        ]["Arn"],
        "profile": iam.create_instance_profile(InstanceProfileName=name, **({"Tags": listed} if listed else {}))[
            "InstanceProfile"
        ]["Arn"],
    }
    iam.put_role_policy(RoleName=name, PolicyName="deepops-agent-metrics", PolicyDocument=METRICS)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    if instance:
        if REGION not in AMIS:
            AMIS[REGION] = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        made["instance"] = ec2.run_instances(
            ImageId=AMIS[REGION],
            InstanceType="g5.xlarge",
            MinCount=1,
            MaxCount=1,
            KeyName=name,
            SecurityGroupIds=[made["sg"]],
            TagSpecifications=spec("instance"),
        )["Instances"][0]["InstanceId"]
    return made


def present(clients: Clients) -> set[str]:
    """Every security group, key pair, role, instance profile and live instance moto holds."""
    ec2, iam = clients.ec2(REGION), clients.client("iam", REGION)
    found = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    found |= {k["KeyPairId"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    found |= {r["Arn"] for r in iam.list_roles()["Roles"]}
    found |= {p["Arn"] for p in iam.list_instance_profiles()["InstanceProfiles"]}
    found |= {
        i["InstanceId"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    }
    return found


def row_for(ledger: Ledger, made: dict[str, str], **kw: Any) -> str:
    """A ledger row for a machine whose stack is `made` later (rows come first): its ID."""
    mid = add_machine(ledger, cloud="aws", **kw)
    with ledger.write() as session:
        row = session.get(Machine, mid)
        row.region, row.provider_refs = REGION, {"created": True, **made}
    return mid


def test_an_orphans_companions_go_with_it_and_leftovers_are_swept(aws, ledger_url):  # noqa: F811
    settings, clients, ledger, _, provider, inst = _setup(aws, ledger_url)
    iam = clients.client("iam", REGION)
    orphan = stack(clients, "m-0rphan01", design_tags(inst, "m-0rphan01"))
    iam.create_policy(PolicyName="deepops-extra", PolicyDocument=METRICS)
    extra = f"arn:aws:iam::{orphan['role'].split(':')[4]}:policy/deepops-extra"
    iam.attach_role_policy(RoleName="deepops-m-0rphan01", PolicyArn=extra)  # a managed policy: detached first
    ended = row_for(ledger, {})
    with ledger.write() as session:
        store.find_machine(session, ended).ended_at = datetime.now(UTC) - timedelta(hours=1)
    failed_destroy = stack(clients, ended, design_tags(inst, ended), instance=False)
    live = row_for(ledger, {})
    live_stack = stack(clients, live, design_tags(inst, live))
    with ledger.write() as session:
        session.get(Machine, live).provider_refs = {"created": True, "instance_id": live_stack["instance"]}
    launching = row_for(ledger, {}, status=states.PROVISIONING, age=timedelta(minutes=2))
    half_made = stack(clients, launching, design_tags(inst, launching), instance=False)  # `up` is still running
    other = stack(clients, "m-0ther001", design_tags("inst-0ther0000000", "m-0ther001"))
    lookalike = stack(clients, "m-1ookalik", {}, instance=False)
    untouchable = set().union(*(set(s.values()) for s in (live_stack, half_made, other, lookalike)))
    iam_reads: list[str] = []
    for op in ("GetRole", "GetInstanceProfile"):
        iam.meta.events.register(
            f"provide-client-params.iam.{op}",
            lambda params, **_: iam_reads.append(params.get("RoleName") or params.get("InstanceProfileName")),
        )
    reaper = Reaper(settings, ledger, {"aws": provider}, ReaperSettings(orphan_grace=timedelta(0)))
    before = present(clients)

    dry = reaper.run(dry_run=True)
    planned = [(a.kind, a.machine_id, a.resource.resource_id) for a in dry.actions]
    assert planned == [
        ("mark-orphan", None, orphan["instance"]),  # no ledger row: marked first, removed a grace later
        *(("terminate-orphan", ended, failed_destroy[k]) for k in ("profile", "role", "key", "sg")),
    ]  # the orphan's companions are not planned: its removal takes them along
    assert present(clients) == before and not dry.errors
    # IAM tags are read only for deepops-* names of machines without a live instance of ours (the
    # listings carry no tags): never for the live machine's or the orphan's (its instance is there).
    assert set(iam_reads) == {f"deepops-{m}" for m in (ended, launching, "m-1ookalik", "m-0ther001")}

    first = reaper.run()
    assert not first.errors, first.errors
    expected = [orphan["instance"], *(failed_destroy[k] for k in ("profile", "role", "key", "sg"))]
    assert [(a.resource.resource_id, a.outcome) for a in first.actions] == [(rid, "done") for rid in expected]
    assert set(orphan.values()) <= present(clients)  # only marked
    [removal] = reaper.run().actions
    assert (removal.kind, removal.resource.resource_id, removal.outcome) == (
        "terminate-orphan",
        orphan["instance"],
        "done",
    )
    assert "also removed" in (removal.note or "") and orphan["sg"] in removal.note
    now = present(clients)
    assert now.isdisjoint(set(orphan.values()) | set(failed_destroy.values()))
    assert untouchable <= now
    assert "deepops-extra" in {p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]}

    assert reaper.run().actions == []  # nothing left to do, nothing touched again
    with ledger.read() as session:
        traces = session.scalars(select(ReaperAction)).all()
        events = session.scalars(select(Event).where(Event.machine_id == ended, Event.kind == "reaper")).all()
        assert store.find_machine(session, launching).ended_at is None
    assert [(t.resource_id, t.machine_tag, t.action, t.outcome) for t in traces] == [
        (orphan["instance"], "m-0rphan01", "mark-orphan", "done"),
        (orphan["instance"], "m-0rphan01", "terminate-orphan", "done"),
    ]
    assert "also removed" in (traces[1].detail or "") and "failed" not in (traces[1].detail or "")
    assert sorted(e.data["resource"] for e in events) == sorted(failed_destroy.values())


def test_a_group_still_in_use_waits_for_a_later_cycle_without_an_error(aws, ledger_url):  # noqa: F811
    settings, clients, ledger, _, provider, inst = _setup(aws, ledger_url)
    orphan = stack(clients, "m-0rphan02", design_tags(inst, "m-0rphan02"))
    in_use = {orphan["sg"]}  # until the terminating instance's network interface is gone

    def dependency_violation(params: dict[str, Any], **_: Any) -> None:
        if params.get("GroupId") in in_use:
            error = {"Code": "DependencyViolation", "Message": f"resource {params['GroupId']} has a dependent object"}
            raise ClientError({"Error": error}, "DeleteSecurityGroup")

    clients.ec2(REGION).meta.events.register("provide-client-params.ec2.DeleteSecurityGroup", dependency_violation)
    reaper = Reaper(settings, ledger, {"aws": provider}, ReaperSettings(orphan_grace=timedelta(0)))

    assert [(a.kind, a.outcome) for a in reaper.run().actions] == [("mark-orphan", "done")]  # seen: marked
    first = reaper.run()
    assert not first.errors and [(a.resource.resource_id, a.outcome) for a in first.actions] == [
        (orphan["instance"], "done")
    ]
    assert f"left for a later cycle: {orphan['sg']} (in use)" in (first.actions[0].note or "")
    assert present(clients) & set(orphan.values()) == {orphan["sg"]}

    second = reaper.run()  # the instance is gone now, the group is a leftover: still in use, no error
    assert not second.errors
    assert [(a.resource.resource_id, a.outcome) for a in second.actions] == [(orphan["sg"], "skipped")]
    assert "in use" in (second.actions[0].note or "")

    in_use.clear()
    third = reaper.run()
    assert not third.errors and [(a.resource.resource_id, a.outcome) for a in third.actions] == [(orphan["sg"], "done")]
    assert orphan["sg"] not in present(clients)
    with ledger.read() as session:
        traces = session.scalars(select(ReaperAction).order_by(ReaperAction.id)).all()
    # The skipped attempt did nothing and left no trace; the mark and each removal did. The group,
    # listed only once the instance was gone, was removed under the machine's mark.
    assert [(t.resource_id, t.machine_tag, t.action, t.outcome) for t in traces] == [
        (orphan["instance"], "m-0rphan02", "mark-orphan", "done"),
        (orphan["instance"], "m-0rphan02", "terminate-orphan", "done"),
        (orphan["sg"], "m-0rphan02", "terminate-orphan", "done"),
    ]


def test_without_agent_metrics_iam_is_never_read(aws, ledger_url, tmp_path):  # noqa: F811
    _, clients, ledger, backend, provider, inst = _setup(aws, ledger_url)
    endpoint = clients.aws.endpoint_url
    settings = settings_for(
        tmp_path / "noiam", f"aws:\n  regions: [{REGION}]\n  endpoint_url: {endpoint}\n  agent_metrics: false\n"
    )
    from deepops_infra.engine import Engine
    from deepops_infra.providers.aws.provider import AwsProvider

    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    left = stack(clients, "m-1eft0001", design_tags(inst, "m-1eft0001"), instance=False)
    calls: list[str] = []
    clients.client("iam", REGION).meta.events.register("before-call.iam", lambda model, **_: calls.append(model.name))

    reaper = Reaper(settings, ledger, {"aws": provider}, ReaperSettings(orphan_grace=timedelta(0)))
    assert [(a.kind, a.resource.machine_id) for a in reaper.run().actions] == [("mark-orphan", "m-1eft0001")]
    dry = reaper.run(dry_run=True)
    assert sorted(a.resource.resource_id for a in dry.actions) == sorted([left["key"], left["sg"]])
    assert {a.kind for a in dry.actions} == {"terminate-orphan"} and calls == []


class LeavingProvider(FakeProvider):
    """The fake cloud, with resources its machines leave behind (listed whatever `found` holds:
    the reaper itself must keep those of machines that still have a resource)."""

    def __init__(self) -> None:
        super().__init__()
        self.leftovers: dict[str, Resource] = {}
        self.busy: set[str] = set()
        self.listing_fails = False

    def leave(self, machine_id: str, tags: dict[str, str], rid: str) -> None:
        self.leftovers[rid] = Resource("fake", machine_id, rid, "exists", tags=tags, location="fake-1")

    def discover_leftovers(self, found: list[Resource]) -> list[Resource]:
        if self.listing_fails:
            raise RuntimeError("listing refused")
        return list(self.leftovers.values())

    def terminate_resource(self, resource: Resource) -> str | None:
        if resource.resource_id in self.busy:
            raise ResourceBusy(f"{resource.resource_id} is in use")
        if resource.resource_id in self.leftovers:
            del self.leftovers[resource.resource_id]
            self.terminated.append(resource.resource_id)
            return None
        super().terminate_resource(resource)
        return "and its companions"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL", "DEEPOPS_LEDGER_URL", "DEEPOPS_POOL"):
        monkeypatch.delenv(var, raising=False)


def test_the_reaper_removes_leftovers_only_of_machines_with_nothing_else_left(tmp_path, ledger_url):
    ledger = Ledger(ledger_url)
    with ledger.write() as session:
        inst = store.installation_id(session)
    fake = LeavingProvider()

    def ours(mid: str, **extra: str) -> dict[str, str]:
        return {**design_tags(inst, mid), **extra}

    fake.add("m-withinst", ours("m-withinst"))  # an orphan instance: its leftovers go with it
    fake.leave("m-withinst", ours("m-withinst"), "sg-withinst")
    fake.leave("m-alone001", ours("m-alone001"), "sg-alone001")
    fake.leave("m-alone001", ours("m-alone001"), "key-alone001")
    fake.leave("m-guarded1", ours("m-guarded1", **{"deepops-protect": "true"}), "sg-guarded1")
    fake.leave("m-0ther001", design_tags("inst-0ther0000000", "m-0ther001"), "sg-0ther001")
    fake.leave("m-nomanage", {"deepops-installation": inst, "deepops-machine": "m-nomanage"}, "sg-nomanage")
    launching = add_machine(ledger, status=states.PROVISIONING, age=timedelta(minutes=1))
    fake.leave(launching, ours(launching), f"sg-{launching}")
    fake.busy.add("key-alone001")
    reaper = Reaper(settings_for(tmp_path), ledger, {"fake": fake}, ReaperSettings(orphan_grace=timedelta(0)))

    marked = reaper.run()  # no ledger rows: each machine is marked once, nothing is touched
    assert [(a.kind, a.resource.resource_id, a.outcome) for a in marked.actions] == [
        ("mark-orphan", "i-m-withinst", "done"),
        ("mark-orphan", "sg-alone001", "done"),
    ]
    assert "(and 1 more of its resources)" in marked.actions[1].detail
    dry = reaper.run(dry_run=True)
    assert [a.resource.resource_id for a in dry.actions] == ["i-m-withinst", "sg-alone001", "key-alone001"]
    assert {"machine": "m-guarded1", "why": "orphan, but protected (deepops-protect=true)"} in dry.waiting
    assert fake.terminated == [] and dict(dry.resources) == {"ours": 1}  # leftovers are not machines' resources

    first = reaper.run()
    assert not first.errors
    assert [(a.resource.resource_id, a.outcome, a.note) for a in first.actions] == [
        ("i-m-withinst", "done", "and its companions"),
        ("sg-alone001", "done", None),
        ("key-alone001", "skipped", "in use, left for a later cycle: key-alone001 is in use"),
    ]
    with ledger.read() as session:
        traces = session.scalars(
            select(ReaperAction).where(ReaperAction.action == "terminate-orphan").order_by(ReaperAction.id)
        ).all()
    assert [(t.resource_id, t.outcome, t.detail.endswith("; and its companions")) for t in traces] == [
        ("i-m-withinst", "done", True),
        ("sg-alone001", "done", False),
    ]

    # With the instance gone, what it left is swept; a failed listing is an error, not a stop.
    fake.busy.clear()
    assert [a.resource.resource_id for a in reaper.run().actions] == ["sg-withinst", "key-alone001"]
    fake.add("m-late0001", ours("m-late0001"))
    fake.listing_fails = True
    failing = reaper.run()
    assert [(a.kind, a.resource.resource_id) for a in failing.actions] == [("mark-orphan", "i-m-late0001")]
    assert failing.errors == ["fake: listing leftovers failed: RuntimeError: listing refused"]
    assert set(fake.leftovers) == {"sg-guarded1", "sg-0ther001", "sg-nomanage", f"sg-{launching}"}
