"""GetMetricData with request bodies that deepops builds itself.

A reaper cycle over 9,000 machines sends 36,000 metric queries. botocore serializes each one, and
parses each result, by walking its shape model (a query is four nested structures and a list): over
half the CPU of the whole utilization read (tests/benchmarks/bench_reaper.py). The queries are
plain JSON of a fixed shape, so when the client speaks CloudWatch's JSON protocol they are written
into the body with `json` instead: botocore serializes only the small envelope (times, token) as
usual, and the queries are put into that body before it is signed. The answer (plain results: Id,
Label, StatusCode, Timestamps, Values) is decoded with `json` too, its timestamps through botocore's
own parser; an error answer is left to botocore. The request and the parsed answer are the same as
botocore's own (tests/test_aws_metricdata.py compares them). Any other protocol (query, CBOR) goes
through botocore unchanged. CloudWatch clients skip parameter validation (clients.UNVALIDATED).
"""

import json
from typing import Any

CONTEXT_KEY = "deepops_metric_queries"
_HOOKED = "_deepops_prebuilt_bodies"


def _take_queries(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """After provide-client-params (which still sees the queries), before botocore serializes."""
    if params.get("MetricDataQueries"):
        context[CONTEXT_KEY] = params["MetricDataQueries"]
        params["MetricDataQueries"] = []


def _put_queries(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    queries = context.get(CONTEXT_KEY)
    if queries is None:
        return
    body = json.loads(params["body"] or b"{}")
    body["MetricDataQueries"] = queries
    params["body"] = json.dumps(body, separators=(",", ":")).encode()


def _parse_answer(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    if response_dict.get("status_code", 500) >= 300 or not response_dict.get("body"):
        return  # errors (and anything unexpected) are botocore's to parse
    from botocore.utils import parse_timestamp

    answer = json.loads(response_dict["body"])
    for result in answer.get("MetricDataResults") or []:
        if result.get("Timestamps"):
            result["Timestamps"] = [parse_timestamp(t) for t in result["Timestamps"]]
    customized_response_dict.update(answer)
    response_dict["body"] = b"{}"  # botocore adds only ResponseMetadata (from the headers) now


def prebuilt_bodies(cw: Any) -> bool:
    """Whether this CloudWatch client can take prebuilt queries (its protocol is JSON); hooks it once."""
    if cw.meta.service_model.resolved_protocol != "json":
        return False
    if not getattr(cw, _HOOKED, False):
        events = cw.meta.events
        events.register("before-parameter-build.cloudwatch.GetMetricData", _take_queries)
        events.register("before-call.cloudwatch.GetMetricData", _put_queries)
        events.register("before-parse.cloudwatch.GetMetricData", _parse_answer)
        setattr(cw, _HOOKED, True)
    return True


def get_metric_data(cw: Any, queries: list[dict[str, Any]], **args: Any) -> dict[str, Any]:
    """One GetMetricData call (queries with their Ids, at most 500), prebuilt where the client allows it."""
    prebuilt_bodies(cw)
    return cw.get_metric_data(MetricDataQueries=queries, **args)
