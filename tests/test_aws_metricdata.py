"""GetMetricData with prebuilt bodies (providers/aws/metricdata.py) against a moto server: the same
request document and the same parsed answer as botocore's own serializer and parser give."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from deepops_infra.providers.aws import metricdata, readpath
from deepops_infra.providers.aws.clients import Clients
from tests.test_aws_readpath import clients, moto_url  # noqa: F401  (fixtures)
from tests.test_aws_utilization import publish_agent

REGION = "us-east-1"


def plain_client(clients: Clients) -> Any:  # noqa: F811
    """A CloudWatch client that metricdata never hooked (botocore does all the work)."""
    return clients.session.client(
        "cloudwatch",
        region_name=REGION,
        endpoint_url=clients.aws.endpoint("cloudwatch"),
        config=Config(parameter_validation=False),
    )


def sent_bodies(client: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    client.meta.events.register(
        "before-send.cloudwatch.GetMetricData", lambda request, **_: bodies.append(json.loads(request.body))
    )
    return bodies


def test_prebuilt_bodies_send_and_parse_what_botocore_does(clients: Clients) -> None:  # noqa: F811
    hooked, plain = clients.cloudwatch(REGION), plain_client(clients)
    assert metricdata.prebuilt_bodies(hooked)  # botocore speaks JSON to CloudWatch (a new protocol: revisit)
    now = datetime.now(UTC).replace(microsecond=0)
    publish_agent(hooked, "m-busy0000", now - timedelta(minutes=2), active=True, idle_seconds=0, gpu=40.0)
    publish_agent(hooked, "m-busy0000", now - timedelta(minutes=4), active=False, idle_seconds=200, gpu=0.0)
    queries = [
        {**readpath._metric("DeepOps", name, [{"Name": "MachineId", "Value": mid}], stat), "Id": f"q{n}"}
        for n, (mid, (name, stat)) in enumerate(
            (mid, metric) for mid in ("m-busy0000", "m-silent00") for metric in readpath.AGENT_METRICS
        )
    ]
    answers, bodies = [], []
    for client in (hooked, plain):
        bodies.append(sent_bodies(client))
        answer = metricdata.get_metric_data(client, queries, StartTime=now - timedelta(minutes=15), EndTime=now)
        answer.pop("ResponseMetadata")
        answers.append(answer)
    assert bodies[0] == bodies[1] and bodies[0][0]["MetricDataQueries"] == queries
    assert answers[0] == answers[1]
    results = {r["Id"]: r for r in answers[0]["MetricDataResults"]}
    assert len(results["q0"]["Values"]) == 2 and isinstance(results["q0"]["Timestamps"][0], datetime)
    assert results["q4"]["Values"] == []  # the silent machine


def test_an_error_answer_is_botocores(clients: Clients) -> None:  # noqa: F811
    cw = clients.cloudwatch(REGION)
    now = datetime.now(UTC)
    query = {**readpath._metric("DeepOps", "Active", [], "Maximum"), "Id": "bad id"}
    with pytest.raises(ClientError):  # the start after the end
        metricdata.get_metric_data(cw, [query], StartTime=now, EndTime=now - timedelta(hours=1))
