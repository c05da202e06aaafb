"""Reconciliation with the clouds' bills: AWS Cost Explorer through moto (queued results),
BigQuery billing export and Azure Cost Management through local servers answering their REST APIs."""

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from deepops_infra.costs.period import Period
from deepops_infra.costs.reconcile import compare
from deepops_infra.costs.reconcile.aws import CostExplorer
from deepops_infra.costs.reconcile.azure import CostManagement
from deepops_infra.costs.reconcile.gcp import BigQueryBillingExport
from deepops_infra.errors import OperationError
from deepops_infra.ledger.db import Ledger
from tests.test_costs import add_machine, seed

OCTOBER = Period.month("2026-10")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def ce_group(machine: str, amount: str) -> dict[str, Any]:
    return {"Keys": [f"deepops-machine${machine}"], "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"}}}


def queue_ce(moto_url: str, pages: list[list[dict[str, Any]]], estimated: bool = False) -> None:
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    results = []
    for i, groups in enumerate(pages):
        page: dict[str, Any] = {
            "GroupDefinitions": [{"Type": "TAG", "Key": "deepops-machine"}],
            "ResultsByTime": [
                {
                    "TimePeriod": {"Start": "2026-10-01", "End": "2026-11-01"},
                    "Total": {},
                    "Groups": groups,
                    "Estimated": estimated,
                }
            ],
            "DimensionValueAttributes": [],
        }
        if i < len(pages) - 1:
            page["NextPageToken"] = f"page-{i + 1}"
        results.append(page)
    answer = requests.post(
        f"{moto_url}/moto-api/static/ce/cost-and-usage-results", json={"results": results}, timeout=10
    )
    assert answer.status_code == 201, answer.text


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def seed_aws(ledger: Ledger) -> None:
    seed(ledger)  # aws in October: m-spot 70.794000, m-fail 0.382500
    with ledger.write() as s:  # 10 h at 0.526/h = 5.26, never on the bill
        add_machine(
            s,
            "m-nobill",
            team="nlp",
            cloud="aws",
            price="0.526",
            gpus=1,
            intervals=[("2026-10-03T00:00:00", "2026-10-03T10:00:00")],
        )


def test_aws_cost_explorer_paginated(ledger_url: str, moto_url: str, aws_env: None) -> None:
    ledger = Ledger(ledger_url)
    seed_aws(ledger)
    queue_ce(
        moto_url,
        [
            [ce_group("m-spot", "70.7990000001"), ce_group("m-fail", "0.5")],
            [
                ce_group("m-ghost", "12"),
                {"Keys": ["deepops-machine$"], "Metrics": {"UnblendedCost": {"Amount": "1500.25", "Unit": "USD"}}},
            ],
        ],
        estimated=True,
    )
    result = compare(ledger, CostExplorer(endpoint_url=moto_url), OCTOBER, Decimal("0.01"))
    lines = {line.machine: line for line in result.lines}
    assert (lines["m-spot"].status, lines["m-spot"].difference) == ("match", Decimal("0.0050000001"))
    assert (lines["m-fail"].status, lines["m-fail"].difference) == ("differs", Decimal("0.117500"))
    assert (lines["m-ghost"].status, lines["m-ghost"].ledger) == ("only on the bill", 0)
    assert (lines["m-nobill"].status, lines["m-nobill"].ledger) == ("only in the ledger", Decimal("5.260000"))
    assert "m-span" not in lines  # on-prem machines are not on a cloud bill
    assert result.untagged == Decimal("1500.25") and result.estimated
    assert [line.status for line in result.lines][-1] == "match"  # problems first
    assert result.ledger_total == Decimal("76.436500") and result.bill_total == Decimal("83.2990000001")


def test_cli_reconcile_aws_through_configured_endpoint(deepops: Any, moto_url: str) -> None:
    seed_aws(deepops.ledger())
    deepops.write_config(f"aws:\n  endpoint_url: {moto_url}\n")
    deepops.env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    queue_ce(moto_url, [[ce_group("m-spot", "70.794"), ce_group("m-fail", "0.3825"), ce_group("m-nobill", "5.26")]])
    out = json.loads(
        deepops.run("cost", "reconcile", "--cloud", "aws", "--month", "2026-10", "--json", check=True).stdout
    )
    assert out["bill_total"] == out["ledger_total"] == 76.4365
    assert {m["machine"]: m["status"] for m in out["machines"]} == dict.fromkeys(
        ["m-spot", "m-fail", "m-nobill"], "match"
    )
    bad = deepops.run("cost", "reconcile", "--cloud", "oracle", "--month", "2026-10")
    assert bad.returncode == 2 and "--cloud 'oracle': use one of aws, gcp, azure" in bad.stderr


class Api:
    """A local HTTP server: each request is recorded, answered by `respond(method, path, body)`."""

    def __init__(self, respond: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append(
                    {"method": self.command, "path": self.path, "body": body, "auth": self.headers["Authorization"]}
                )
                status, payload = respond(self.command, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


SCHEMA = {
    "fields": [
        {"name": "machine", "type": "STRING", "mode": "NULLABLE"},
        {"name": "currency", "type": "STRING", "mode": "NULLABLE"},
        {"name": "cost", "type": "STRING", "mode": "NULLABLE"},
    ]
}
JOB = {"projectId": "acme-billing", "jobId": "job_Q1w2E3r4", "location": "US"}


def bigquery(method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    if method == "POST":  # jobs.query: not finished within its timeout
        return 200, {"kind": "bigquery#queryResponse", "jobReference": JOB, "jobComplete": False}
    query = parse_qs(urlparse(path).query)
    if "pageToken" not in query:
        return 200, {
            "kind": "bigquery#getQueryResultsResponse",
            "etag": "abc",
            "schema": SCHEMA,
            "jobReference": JOB,
            "totalRows": "3",
            "pageToken": "BFSQ2PAGE",
            "rows": [{"f": [{"v": "m-gce"}, {"v": "USD"}, {"v": "41.6"}]}],
            "totalBytesProcessed": "1048576",
            "jobComplete": True,
            "cacheHit": False,
        }
    return 200, {
        "kind": "bigquery#getQueryResultsResponse",
        "schema": SCHEMA,
        "jobReference": JOB,
        "totalRows": "3",
        "rows": [
            {"f": [{"v": "m-gce2"}, {"v": "USD"}, {"v": "2.5"}]},
            {"f": [{"v": None}, {"v": "USD"}, {"v": "310.17"}]},
        ],
        "jobComplete": True,
    }


def test_gcp_bigquery_billing_export(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with ledger.write() as s:  # a2-highgpu-1g with its GPU, 10 h at 4.16/h = 41.60; 1 h at 2.00 = 2.00
        add_machine(
            s,
            "m-gce",
            team="vision",
            cloud="gcp",
            price="4.16",
            gpus=1,
            intervals=[("2026-10-08T00:00:00", "2026-10-08T10:00:00")],
        )
        add_machine(
            s,
            "m-gce2",
            team="vision",
            cloud="gcp",
            price="2.00",
            gpus=1,
            intervals=[("2026-10-09T00:00:00", "2026-10-09T01:00:00")],
        )
    api = Api(bigquery)
    try:
        source = BigQueryBillingExport(
            table="acme-billing.billing.gcp_billing_export_v1_01A2B3_C4D5E6_F7G8H9",
            project="acme-billing",
            endpoint=api.url,
            token=lambda: "ya29.test-token",
            poll_seconds=0,
        )
        result = compare(ledger, source, OCTOBER, Decimal("0.01"))
    finally:
        api.close()
    lines = {line.machine: (line.status, line.difference) for line in result.lines}
    assert lines == {"m-gce": ("match", Decimal("0")), "m-gce2": ("differs", Decimal("0.5"))}
    assert result.untagged == Decimal("310.17")
    first = api.requests[0]
    assert first["method"] == "POST" and first["path"] == "/bigquery/v2/projects/acme-billing/queries"
    assert first["auth"] == "Bearer ya29.test-token"
    assert "`acme-billing.billing.gcp_billing_export_v1_01A2B3_C4D5E6_F7G8H9`" in first["body"]["query"]
    params = {p["name"]: p["parameterValue"]["value"] for p in first["body"]["queryParameters"]}
    assert params == {"tag": "deepops-machine", "start": "2026-10-01 00:00:00+00", "end": "2026-11-01 00:00:00+00"}
    assert [r["path"].split("?")[0] for r in api.requests[1:]] == [
        "/bigquery/v2/projects/acme-billing/queries/job_Q1w2E3r4"
    ] * 2
    assert "pageToken=BFSQ2PAGE" in api.requests[2]["path"] and "location=US" in api.requests[2]["path"]


def test_gcp_refuses_a_table_name_that_is_not_one() -> None:
    from deepops_infra.errors import UserError

    source = BigQueryBillingExport(table="x.y.z`; DROP TABLE t; --", project="p", token=lambda: "t")
    with pytest.raises(UserError, match=r"expected project\.dataset\.table"):
        source.fetch(OCTOBER)


def azure_pages(api_url: list[str]) -> Any:
    columns = [
        {"name": "Cost", "type": "Number"},
        {"name": "TagKey", "type": "String"},
        {"name": "TagValue", "type": "String"},
        {"name": "Currency", "type": "String"},
    ]

    def respond(method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if "$skiptoken" not in path:
            return 200, {
                "id": "subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.CostManagement/query/q1",
                "name": "q1",
                "type": "Microsoft.CostManagement/query",
                "properties": {
                    "nextLink": f"{api_url[0]}{path}&$skiptoken=AQAAAA%3D%3D",
                    "columns": columns,
                    "rows": [[27.4, "deepops-machine", "m-az1", "USD"]],
                },
            }
        return 200, {
            "name": "q1",
            "type": "Microsoft.CostManagement/query",
            "properties": {
                "nextLink": None,
                "columns": columns,
                "rows": [[3.3333, "deepops-machine", "m-az2", "USD"], [812.05, "", "", "USD"]],
            },
        }

    return respond


def test_azure_cost_management_query(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    with ledger.write() as s:  # NC24ads_A100_v4 at 3.673/h for 7.5 h = 27.5475
        add_machine(
            s,
            "m-az1",
            team="vision",
            cloud="azure",
            price="3.673",
            gpus=1,
            intervals=[("2026-10-08T00:00:00", "2026-10-08T07:30:00")],
        )
    holder: list[str] = []
    api = Api(azure_pages(holder))
    holder.append(api.url)
    try:
        source = CostManagement(
            subscription_id="00000000-0000-0000-0000-000000000001", endpoint=api.url, token=lambda: "eyJ.test"
        )
        result = compare(ledger, source, OCTOBER, Decimal("0.01"))
    finally:
        api.close()
    lines = {line.machine: (line.status, line.ledger, line.bill) for line in result.lines}
    assert lines == {
        "m-az1": ("differs", Decimal("27.547500"), Decimal("27.4")),
        "m-az2": ("only on the bill", Decimal(0), Decimal("3.3333")),
    }
    assert result.untagged == Decimal("812.05")
    first = api.requests[0]
    assert first["path"] == (
        "/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.CostManagement/query"
        "?api-version=2023-11-01"
    )
    assert first["body"]["timePeriod"] == {"from": "2026-10-01T00:00:00Z", "to": "2026-10-31T23:59:59Z"}
    assert first["body"]["dataset"]["grouping"] == [{"type": "TagKey", "name": "deepops-machine"}]
    assert first["auth"] == "Bearer eyJ.test" and len(api.requests) == 2


def test_billing_api_errors_are_one_line_without_the_token(ledger_url: str) -> None:
    api = Api(lambda m, p, b: (403, {"error": {"code": "AuthorizationFailed", "message": "no access to scope"}}))
    try:
        source = CostManagement(subscription_id="sub", endpoint=api.url, token=lambda: "secret-token")
        with pytest.raises(OperationError) as info:
            source.fetch(OCTOBER)
    finally:
        api.close()
    assert str(info.value) == "Azure Cost Management: HTTP 403: no access to scope"
    assert "secret-token" not in str(info.value)


def test_missing_settings_are_user_errors(sqlite_deepops: Any) -> None:
    for cloud, needs in (("gcp", "gcp.billing_export_table"), ("azure", "azure.subscription_id")):
        proc = sqlite_deepops.run("cost", "reconcile", "--cloud", cloud, "--month", "2026-10")
        assert proc.returncode == 2 and needs in proc.stderr, proc.stderr


def test_reconciliation_settings_are_valid_cloud_settings(tmp_path, monkeypatch):
    """The keys `cost reconcile` reads live in the same cloud sections the launch path validates:
    setting them must not make `up` or `doctor` refuse the configuration."""
    from deepops_infra.config import Settings
    from deepops_infra.providers.aws.settings import aws_settings
    from deepops_infra.providers.azure.settings import azure_settings
    from deepops_infra.providers.gcp.settings import gcp_settings

    (tmp_path / "config.yaml").write_text(
        "gcp:\n  project: p\n  billing_export_table: p.billing.gcp_billing_export_v1_X\n"
        "  billing_project: q\n  bigquery_endpoint: http://127.0.0.1:9/\n"
        "azure:\n  subscription_id: s\n  management_endpoint: http://127.0.0.1:9\n"
        "aws:\n  endpoints: {ce: 'http://127.0.0.1:9'}\n"
    )
    monkeypatch.delenv("DEEPOPS_CONFIG", raising=False)
    settings = Settings(home=tmp_path)
    assert gcp_settings(settings).billing_export_table == "p.billing.gcp_billing_export_v1_X"
    assert azure_settings(settings).management_endpoint == "http://127.0.0.1:9"
    assert aws_settings(settings).endpoints["ce"] == "http://127.0.0.1:9"
