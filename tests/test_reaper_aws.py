"""The reaper on the AWS provider against a moto server: managed, foreign, other-installation,
protected, expired, idle and live instances with CloudWatch GPU samples; only the right ones are
acted on (teardown through the engine, break-glass terminate for an orphan)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.engine import Backend, Engine
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine, ReaperAction, UtilizationSample
from deepops_infra.providers.aws import readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.provider import AwsProvider
from deepops_infra.providers.aws.settings import AwsSettings
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.reaper_fakes import add_machine, settings_for
from tests.test_aws_readpath import AMIS, moto_url  # noqa: F401  (fixture)

REGION = "us-east-1"


class InstanceBackend(Backend):
    """A stack per machine holding one moto instance; destroy terminates it."""

    project = "deepops-aws"

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.stacks: dict[str, dict[str, Any]] = {}
        self.destroyed: list[str] = []

    def check(self) -> None:
        return None

    def exists(self, stack: str) -> bool:
        return stack in self.stacks

    def set_config(self, stack: str, config: dict[str, Any], secret: frozenset[str] = frozenset()) -> None:
        return None

    def up(self, stack: str, on_event: Any) -> dict[str, Any]:
        raise NotImplementedError

    def destroy(self, stack: str, on_event: Any) -> None:
        self.destroyed.append(stack)
        self.clients.ec2(REGION).terminate_instances(InstanceIds=[self.stacks[stack].pop("instance")])

    def refresh(self, stack: str, on_event: Any) -> None:
        return None

    def pending_operations(self, stack: str) -> list[dict[str, Any]]:
        return []

    def clear_pending(self, stack: str) -> None:
        return None

    def resource_count(self, stack: str) -> int:
        return len(self.stacks[stack])

    def remove(self, stack: str) -> None:
        del self.stacks[stack]


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[tuple[Any, Clients]]:  # noqa: F811
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    for var in ("AWS_PROFILE", "DEEPOPS_CONFIG", "DEEPOPS_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = settings_for(tmp_path, f"aws:\n  regions: [{REGION}, us-west-2]\n  endpoint_url: {moto_url}\n")
    yield settings, Clients(AwsSettings(endpoint_url=moto_url, regions=(REGION, "us-west-2")))
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)  # moto's state is shared in-process


def run_instance(clients: Clients, tags: dict[str, str]) -> str:
    ec2 = clients.ec2(REGION)
    if REGION not in AMIS:
        AMIS[REGION] = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
    inst = ec2.run_instances(
        ImageId=AMIS[REGION], InstanceType="g5.xlarge", MinCount=1, MaxCount=1, TagSpecifications=spec
    )
    return inst["Instances"][0]["InstanceId"]


def gpu_samples(clients: Clients, instance_id: str, percent: float) -> None:
    now = datetime.now(UTC)
    dims = [{"Name": "InstanceId", "Value": instance_id}, {"Name": "index", "Value": "0"}]
    clients.cloudwatch(REGION).put_metric_data(
        Namespace=readpath.METRIC_NAMESPACE,
        MetricData=[
            {"MetricName": name, "Dimensions": dims, "Value": percent, "Timestamp": now - timedelta(minutes=m)}
            for m in (2, 4)
            for name in (readpath.GPU_METRIC, readpath.MEMORY_METRIC)
        ],
    )


def _setup(aws, ledger_url):  # type: ignore[no-untyped-def]
    """The AWS provider over moto with a fake engine backend, and this installation's ID."""
    settings, clients = aws
    ledger = Ledger(ledger_url)
    backend = InstanceBackend(clients)
    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    with ledger.write() as session:
        inst = store.installation_id(session)
    return settings, clients, ledger, backend, provider, inst


def test_only_the_right_instances_are_acted_on(aws, ledger_url):
    settings, clients, ledger, backend, provider, inst = _setup(aws, ledger_url)

    def machine(**kw: Any) -> tuple[str, str]:
        protect = kw.pop("protect", False)
        mid = add_machine(ledger, cloud="aws", **kw)
        tags = {"deepops-managed": "true", "deepops-installation": inst, "deepops-machine": mid}
        if protect:
            tags["deepops-protect"] = "true"
        iid = run_instance(clients, tags)
        backend.stacks[mid] = {"instance": iid}
        with ledger.write() as session:
            row = session.get(Machine, mid)
            row.region, row.provider_refs = REGION, {"created": True, "instance_id": iid}
        return mid, iid

    expired, expired_i = machine(age=timedelta(hours=3), ttl=timedelta(hours=2))
    live, live_i = machine(age=timedelta(hours=3), idle_timeout=timedelta(minutes=30))
    idle, idle_i = machine(age=timedelta(hours=3), idle_timeout=timedelta(minutes=30))
    protected, protected_i = machine(age=timedelta(hours=3), ttl=timedelta(hours=2), protect=True)
    orphan_i = run_instance(
        clients, {"deepops-managed": "true", "deepops-installation": inst, "deepops-machine": "m-0rphan00"}
    )
    foreign_i = run_instance(clients, {"Name": "someone's notebook"})
    other_i = run_instance(
        clients, {"deepops-managed": "true", "deepops-installation": "inst-0ther0000000", "deepops-machine": "m-1"}
    )
    gpu_samples(clients, live_i, 88.0)
    gpu_samples(clients, idle_i, 0.0)
    # The reaper has sampled the idle one every minute for the last 40 minutes: all idle.
    now = datetime.now(UTC)
    with ledger.write() as session:
        session.add_all(
            UtilizationSample(
                machine_id=idle, at=now - timedelta(minutes=m), interval_seconds=60, source="provider", active=False
            )
            for m in range(1, 41)
        )
    rs = ReaperSettings(grace=timedelta(0), orphan_grace=timedelta(0))
    reaper = Reaper(settings, ledger, {"aws": provider}, rs)

    dry = reaper.run(dry_run=True)
    planned = {(a.machine_id or a.resource.resource_id, a.kind, a.reason) for a in dry.actions}
    assert planned == {
        (expired, "warn", "ttl-expired"),
        (idle, "warn", "idle"),
        (orphan_i, "mark-orphan", "orphan"),  # no ledger row: marked first, removed a grace later
    }
    assert dict(dry.resources) == {"ours": 4, "protected": 1}  # foreign ones are filtered out by EC2 itself

    reaper.run()
    second = reaper.run()
    done = {(a.machine_id or a.resource.resource_id, a.kind) for a in second.actions if a.outcome == "done"}
    assert done == {(expired, "teardown"), (idle, "teardown"), (orphan_i, "terminate-orphan")}
    assert sorted(backend.destroyed) == sorted([expired, idle])

    states_now = {
        i["InstanceId"]: i["State"]["Name"]
        for r in clients.ec2(REGION).describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    for gone in (expired_i, idle_i, orphan_i):
        assert states_now[gone] in ("shutting-down", "terminated")
    for kept in (live_i, protected_i, foreign_i, other_i):
        assert states_now[kept] == "running"
    with ledger.read() as session:
        assert store.find_machine(session, expired).status == states.TERMINATED
        assert store.find_machine(session, idle).status == states.TERMINATED
        assert store.find_machine(session, live).ended_at is None
        assert store.find_machine(session, protected).ended_at is None
        live_samples = session.scalars(select(UtilizationSample).where(UtilizationSample.machine_id == live)).all()
    assert [s.active for s in live_samples] == [True, True] and live_samples[0].gpu_util_percent == 88.0
    with ledger.read() as session:
        traces = session.scalars(select(ReaperAction)).all()
    # The orphan had no ledger row (no machine to hang an event on): its removal is still recorded.
    assert [(t.resource_id, t.machine_tag, t.action, t.reason, t.outcome) for t in traces] == [
        (orphan_i, "m-0rphan00", "mark-orphan", "orphan", "done"),
        (orphan_i, "m-0rphan00", "terminate-orphan", "orphan", "done"),
    ]
    assert traces[1].location.startswith(REGION) and traces[1].data["tags"]["deepops-installation"] == inst


def agent_metrics(clients: Clients, machine_id: str, *, idle_seconds: float) -> None:
    """What the machine's deepops-agent publishes every minute (namespace DeepOps, by MachineId)."""
    now = datetime.now(UTC)
    dims = [{"Name": "MachineId", "Value": machine_id}]
    data = [("Active", 0.0 if idle_seconds else 1.0), ("IdleSeconds", idle_seconds), ("GPUUtilization", 1.0)]
    clients.cloudwatch(REGION).put_metric_data(
        Namespace="DeepOps",
        MetricData=[
            {"MetricName": name, "Dimensions": dims, "Value": value, "Timestamp": now - timedelta(minutes=1)}
            for name, value in data
        ],
    )


def test_the_reaper_reads_every_machines_agent_in_one_batch(aws, ledger_url):
    """Busy agents keep their machines, an idle agent's machine is warned then ended, a machine
    with only CloudWatch-agent metrics is read through the fallback, a silent one is unknown
    (kept); all of it in one GetMetricData per pass, however many machines."""
    settings, clients, ledger, backend, provider, inst = _setup(aws, ledger_url)

    def machine() -> str:
        mid = add_machine(ledger, cloud="aws", age=timedelta(hours=3), idle_timeout=timedelta(minutes=30))
        iid = run_instance(clients, {"deepops-managed": "true", "deepops-installation": inst, "deepops-machine": mid})
        backend.stacks[mid] = {"instance": iid}
        with ledger.write() as session:
            row = session.get(Machine, mid)
            row.region, row.provider_refs = REGION, {"created": True, "instance_id": iid}
        return mid

    busy = [machine() for _ in range(10)]
    idle, fallback, silent = machine(), machine(), machine()
    for mid in busy:
        agent_metrics(clients, mid, idle_seconds=0)
    agent_metrics(clients, idle, idle_seconds=3 * 3600)
    gpu_samples(clients, backend.stacks[fallback]["instance"], 70.0)
    gets: list[dict[str, Any]] = []
    clients.cloudwatch(REGION).meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData", lambda params, **_: gets.append(dict(params))
    )
    reaper = Reaper(settings, ledger, {"aws": provider}, ReaperSettings(grace=timedelta(0)))

    dry = reaper.run(dry_run=True)
    assert [(a.machine_id, a.kind, a.reason) for a in dry.actions] == [(idle, "warn", "idle")]
    assert len(gets) == 2  # the agents' batch (13 machines, 52 queries), then the CWAgent fallback's
    assert len(gets[0]["MetricDataQueries"]) == 4 * 13 and len(gets[1]["MetricDataQueries"]) == 2

    done: list[tuple[str | None, str]] = []
    for _ in range(4):  # warned, then (grace 0) ended on a later cycle; a loaded box may take one more
        done += [(a.machine_id, a.kind) for a in reaper.run().actions if a.outcome == "done"]
        if backend.destroyed:
            break
    assert done == [(idle, "warn"), (idle, "teardown")]  # nothing else touched, each once
    assert backend.destroyed == [idle]
    with ledger.read() as session:
        samples = session.scalars(select(UtilizationSample).where(UtilizationSample.machine_id.in_(busy))).all()
        kept = {mid: store.find_machine(session, mid).ended_at for mid in [*busy, fallback, silent]}
        fallback_sample = session.scalars(
            select(UtilizationSample).where(UtilizationSample.machine_id == fallback)
        ).first()
    assert set(kept.values()) == {None}
    assert {(s.source, s.active) for s in samples} == {("agent", True)}
    assert (fallback_sample.source, fallback_sample.active, fallback_sample.gpu_util_percent) == (
        "provider",
        True,
        70.0,
    )
