"""GCP: the Cloud Billing export in BigQuery, queried through the BigQuery REST API (jobs.query).

Settings (config.yaml `gcp:`): `billing_export_table` (`project.dataset.gcp_billing_export_v1_XXXXXX`,
the standard usage cost export), `billing_project` (runs the query job; default: the table's
project), `bigquery_endpoint` (default https://bigquery.googleapis.com). Credentials: Application
Default Credentials (google-auth) with the read-only BigQuery scope. Cost per machine is the
`deepops-machine` label's cost plus its credits (credits are negative), by usage time in UTC.
"""

import re
import time
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from deepops_infra.config import Config
from deepops_infra.costs.period import Period
from deepops_infra.costs.reconcile import MACHINE_TAG, Bill, BillingSource
from deepops_infra.costs.reconcile.http import TokenProvider, call
from deepops_infra.errors import OperationError, UserError

_TABLE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]\.[A-Za-z0-9_]{1,1024}\.[A-Za-z0-9_]{1,1024}")
SCOPE = "https://www.googleapis.com/auth/bigquery.readonly"

QUERY = """
SELECT
  (SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = @tag) AS machine,
  currency,
  CAST(SUM(cost) + SUM(IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS c), 0)) AS STRING) AS cost
FROM `{table}`
WHERE usage_start_time >= TIMESTAMP(@start) AND usage_start_time < TIMESTAMP(@end)
GROUP BY machine, currency
"""


def _adc_token() -> str:
    try:
        import google.auth
        import google.auth.transport.requests
    except ImportError:
        raise UserError("GCP reconciliation needs google-auth: pip install google-auth") from None
    credentials, _ = google.auth.default(scopes=[SCOPE])
    credentials.refresh(google.auth.transport.requests.Request())
    return str(credentials.token)


@dataclass
class BigQueryBillingExport(BillingSource):
    table: str
    project: str
    endpoint: str = "https://bigquery.googleapis.com"
    token: TokenProvider = _adc_token
    poll_seconds: float = 1.0
    cloud: str = "gcp"

    @classmethod
    def from_config(cls, config: Config) -> "BigQueryBillingExport":
        section = config.section("gcp")
        table = section.get("billing_export_table")
        if not table:
            raise UserError("GCP reconciliation needs gcp.billing_export_table in config.yaml (project.dataset.table)")
        if not _TABLE.fullmatch(str(table)):
            raise UserError(f"gcp.billing_export_table {table!r}: expected project.dataset.table")
        project = str(section.get("billing_project") or str(table).split(".", 1)[0])
        endpoint = str(section.get("bigquery_endpoint") or cls.endpoint).rstrip("/")
        return cls(table=str(table), project=project, endpoint=endpoint)

    def fetch(self, period: Period) -> Bill:
        if not _TABLE.fullmatch(self.table):
            raise UserError(f"BigQuery table {self.table!r}: expected project.dataset.table")
        base = f"{self.endpoint}/bigquery/v2/projects/{urllib.parse.quote(self.project)}/queries"
        body = {
            "query": QUERY.format(table=self.table),
            "useLegacySql": False,
            "parameterMode": "NAMED",
            "queryParameters": [
                _param("tag", MACHINE_TAG),
                _param("start", period.start.strftime("%Y-%m-%d %H:%M:%S+00")),
                _param("end", period.end.strftime("%Y-%m-%d %H:%M:%S+00")),
            ],
            "timeoutMs": 30000,
        }
        page = call("BigQuery", "POST", base, self.token, body)
        bill = Bill(cloud="gcp")
        currencies: set[str] = set()
        job = page.get("jobReference", {})
        deadline = time.monotonic() + 600
        while True:
            if not page.get("jobComplete", False):
                if time.monotonic() > deadline:
                    raise OperationError("BigQuery: the billing query did not finish in 10 minutes")
                time.sleep(self.poll_seconds)
            else:
                _check_schema(page)
                for row in page.get("rows", []):
                    machine, currency, cost = (cell.get("v") for cell in row["f"])
                    currencies.add(currency or "USD")
                    bill.add(machine, Decimal(cost or "0"))
                if not page.get("pageToken"):
                    break
            query = {"location": job.get("location", ""), "timeoutMs": "30000"}
            if page.get("pageToken"):
                query["pageToken"] = page["pageToken"]
            url = f"{base}/{urllib.parse.quote(job['jobId'])}?{urllib.parse.urlencode(query)}"
            page = call("BigQuery", "GET", url, self.token)
        if len(currencies) > 1:
            raise OperationError(f"BigQuery billing export has several currencies: {', '.join(sorted(currencies))}")
        bill.currency = currencies.pop() if currencies else "USD"
        return bill


def _param(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "parameterType": {"type": "STRING"}, "parameterValue": {"value": value}}


def _check_schema(page: dict[str, Any]) -> None:
    names = [f.get("name") for f in page.get("schema", {}).get("fields", [])]
    if names and names != ["machine", "currency", "cost"]:
        raise OperationError(f"BigQuery: unexpected result columns {names}")
