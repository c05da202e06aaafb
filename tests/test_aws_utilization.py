"""AWS utilization against a moto server: what deepops-agent publishes (namespace DeepOps, by
MachineId) read for many machines at once in GetMetricData batches, the CloudWatch agent's NVIDIA
metrics as the fallback (one ListMetrics per region, not per machine), and stale, missing or
unreadable data as unknown (counts as active)."""

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from deepops_infra.agent import deepops_agent as da
from deepops_infra.providers.aws import readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.settings import AwsSettings
from tests.test_aws_readpath import clients, moto_url  # noqa: F401  (fixtures)

REGION = "us-east-1"


def count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client.meta.events.register(
        f"provide-client-params.cloudwatch.{operation}", lambda params, **_: calls.append(dict(params))
    )
    return calls


def publish_agent(
    cw: Any, machine_id: str, at: datetime, *, active: bool, idle_seconds: float, gpu: float | None = None
) -> None:
    """What deepops_agent.cloudwatch_sink puts for one status (the same names and dimension)."""
    dims = [{"Name": "MachineId", "Value": machine_id}]
    data = [("Active", 1.0 if active else 0.0), ("IdleSeconds", idle_seconds)]
    if gpu is not None:
        data += [("GPUUtilization", gpu), ("GPUMemoryUtilization", gpu / 2)]
    cw.put_metric_data(
        Namespace="DeepOps",
        MetricData=[{"MetricName": n, "Value": v, "Dimensions": dims, "Timestamp": at} for n, v in data],
    )


def publish_cwagent(cw: Any, instance_id: str, at: datetime, percent: float) -> None:
    dims = [{"Name": "InstanceId", "Value": instance_id}, {"Name": "index", "Value": "0"}]
    cw.put_metric_data(
        Namespace="CWAgent",
        MetricData=[
            {"MetricName": name, "Dimensions": dims, "Value": percent, "Timestamp": at}
            for name in (readpath.GPU_METRIC, readpath.MEMORY_METRIC)
        ],
    )


@pytest.mark.parametrize("machines", [5, 30])
def test_many_machines_are_read_in_batches_with_the_right_values(
    clients: Clients,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    machines: int,
) -> None:
    monkeypatch.setattr(readpath, "MAX_QUERIES", 20)  # 5 machines per call (4 queries each)
    cw = clients.cloudwatch(REGION)
    now = datetime.now(UTC).replace(microsecond=0)
    expected = {}
    for n in range(machines):
        mid = f"m-{n:08x}"
        busy = n % 3 == 0
        publish_agent(cw, mid, now - timedelta(minutes=1), active=busy, idle_seconds=0 if busy else 600 + n, gpu=n)
        expected[mid] = (busy, float(n))
    gets, lists = count_calls(cw, "GetMetricData"), count_calls(cw, "ListMetrics")
    readings = readpath.utilization_many(clients, REGION, {mid: f"i-{mid}" for mid in expected}, now=now)
    assert len(gets) == math.ceil(4 * machines / 20)  # grows with machines / batch, one call per batch
    assert all(len(c["MetricDataQueries"]) <= 20 for c in gets)
    assert lists == []  # every machine's agent answered: no fallback, no listing
    for n, (mid, (busy, gpu)) in enumerate(expected.items()):
        u = readings[mid]
        assert u.source == "agent" and u.active is busy
        assert now - timedelta(minutes=1) <= u.at <= now  # the end of the minute it was published in
        assert u.last_active_at == u.at - timedelta(seconds=0 if busy else 600 + n)
        assert u.gpu_percent == [gpu] and u.gpu_memory_percent == [gpu / 2]


def test_the_real_batch_is_500_queries(clients: Clients) -> None:  # noqa: F811
    cw = clients.cloudwatch(REGION)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = [f"m-{n:08x}" for n in range(130)]  # 520 queries: two calls
    for mid in ids[:3]:
        publish_agent(cw, mid, now - timedelta(minutes=2), active=True, idle_seconds=0)
    gets = count_calls(cw, "GetMetricData")
    readings = readpath.utilization_many(clients, REGION, {mid: f"i-{n}" for n, mid in enumerate(ids)}, now=now)
    assert [len(c["MetricDataQueries"]) for c in gets] == [500, 20]
    assert [readings[mid].active for mid in ids[:4]] == [True, True, True, None]  # the 4th published nothing


def test_machines_without_agent_metrics_fall_back_to_the_cloudwatch_agent(clients: Clients) -> None:  # noqa: F811
    cw = clients.cloudwatch(REGION)
    now = datetime.now(UTC).replace(microsecond=0)
    publish_agent(cw, "m-agent000", now - timedelta(minutes=1), active=False, idle_seconds=120)
    for n in range(6):
        publish_cwagent(cw, f"i-cw{n}", now - timedelta(minutes=2), 50.0 if n % 2 else 0.0)
    publish_cwagent(cw, "i-someoneelse", now - timedelta(minutes=2), 99.0)  # not asked for
    instances = {"m-agent000": "i-agent", **{f"m-cw{n}": f"i-cw{n}" for n in range(6)}, "m-silent0": "i-silent"}
    gets, lists = count_calls(cw, "GetMetricData"), count_calls(cw, "ListMetrics")
    readings = readpath.utilization_many(clients, REGION, instances, now=now)
    assert len(lists) == 2  # one per CWAgent metric for the whole region, not one per machine
    assert len(gets) == 2  # the agents' batch, then the fallback's
    assert readings["m-agent000"].active is False and readings["m-agent000"].source == "agent"
    for n in range(6):
        u = readings[f"m-cw{n}"]
        assert (u.source, u.active, u.gpu_percent) == ("provider", bool(n % 2), [50.0 if n % 2 else 0.0])
    assert readings["m-silent0"].active is None and readings["m-silent0"].error is None


def test_a_silent_agent_is_unknown_not_idle(clients: Clients) -> None:  # noqa: F811
    cw = clients.cloudwatch(REGION)
    now = datetime.now(UTC).replace(microsecond=0)
    publish_agent(cw, "m-stale000", now - timedelta(minutes=9), active=False, idle_seconds=7200)
    u = readpath.utilization(clients, REGION, "i-stale", now=now, machine_id="m-stale000")
    assert u.active is None and "stale" in (u.signals or {}).get("error", "")


def test_cloudwatch_unreachable_is_unknown_with_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    dead = Clients(AwsSettings(endpoint_url="http://127.0.0.1:9"))
    dead.cloudwatch(REGION).meta.config.retries = {"max_attempts": 0}
    readings = readpath.utilization_many(dead, REGION, {"m-1": "i-1", "m-2": "i-2"})
    assert {mid: u.active for mid, u in readings.items()} == {"m-1": None, "m-2": None}
    assert all("CloudWatch in us-east-1" in (u.error or "") for u in readings.values())


def test_what_the_agent_publishes_is_what_the_reader_reads(clients: Clients, moto_url: str) -> None:  # noqa: F811
    """The agent's own CloudWatch sink and the reaper's reader agree on names and dimensions."""
    config = {**da.DEFAULTS, "machine_id": "m-roundtr1", "state_dir": "/nonexistent"}
    sink = da.cloudwatch_sink({"namespace": "DeepOps", "region": REGION, "endpoint_url": moto_url}, config)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    status = {
        "at": da.iso(at),
        "idle": True,
        "idle_seconds": 900.0,
        "signals": {"gpu": {"state": "idle", "gpus": [{"util": 2.0, "mem": 30.0}, {"util": 4.0, "mem": 10.0}]}},
    }
    sink(status)
    u = readpath.utilization(clients, REGION, "i-x", machine_id="m-roundtr1")
    assert u.active is False and at <= u.at <= at + timedelta(seconds=readpath.PERIOD_S)
    assert u.last_active_at == u.at - timedelta(seconds=900)
    assert (u.gpu_percent, u.gpu_memory_percent) == ([4.0], [30.0])  # the busiest GPU of the sample
