"""Azure: the Cost Management Query API for a subscription, grouped by the `deepops-machine` tag.

Settings (config.yaml `azure:`): `subscription_id`, `management_endpoint` (default
https://management.azure.com; sovereign clouds and tests override it). Credentials:
azure-identity's DefaultAzureCredential; the caller needs Cost Management Reader.
"""

import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from deepops_infra.config import Config
from deepops_infra.costs.period import Period
from deepops_infra.costs.reconcile import MACHINE_TAG, Bill, BillingSource
from deepops_infra.costs.reconcile.http import TokenProvider, call
from deepops_infra.errors import OperationError, UserError

API_VERSION = "2023-11-01"
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD")


def _default_token() -> str:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UserError("Azure reconciliation needs azure-identity: pip install azure-identity") from None
    return str(DefaultAzureCredential().get_token("https://management.azure.com/.default").token)


@dataclass
class CostManagement(BillingSource):
    subscription_id: str
    endpoint: str = "https://management.azure.com"
    token: TokenProvider = _default_token
    cloud: str = "azure"

    @classmethod
    def from_config(cls, config: Config) -> "CostManagement":
        section = config.section("azure")
        subscription = section.get("subscription_id")
        if not subscription:
            raise UserError("Azure reconciliation needs azure.subscription_id in config.yaml")
        endpoint = str(section.get("management_endpoint") or cls.endpoint).rstrip("/")
        return cls(subscription_id=str(subscription), endpoint=endpoint)

    def fetch(self, period: Period) -> Bill:
        scope = f"/subscriptions/{urllib.parse.quote(self.subscription_id)}"
        url = f"{self.endpoint}{scope}/providers/Microsoft.CostManagement/query?api-version={API_VERSION}"
        last = period.end - timedelta(seconds=1)  # the API's `to` is inclusive
        body = {
            "type": "ActualCost",
            "timeframe": "Custom",
            "timePeriod": {
                "from": period.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "to": last.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "dataset": {
                "granularity": "None",
                "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
                "grouping": [{"type": "TagKey", "name": MACHINE_TAG}],
            },
        }
        bill = Bill(cloud="azure")
        currencies: set[str] = set()
        while url:
            page = call("Azure Cost Management", "POST", url, self.token, body)
            props = page.get("properties", {})
            columns = [c["name"] for c in props.get("columns", [])]
            cost_i = next((columns.index(c) for c in COST_COLUMNS if c in columns), None)
            if cost_i is None or "TagValue" not in columns:
                raise OperationError(f"Azure Cost Management: unexpected columns {columns}")
            value_i = columns.index("TagValue")
            key_i = columns.index("TagKey") if "TagKey" in columns else None
            currency_i = columns.index("Currency") if "Currency" in columns else None
            for row in props.get("rows", []):
                tagged = key_i is None or (row[key_i] or "").lower() == MACHINE_TAG
                machine = row[value_i] if tagged else None
                if currency_i is not None:
                    currencies.add(row[currency_i])
                bill.add(machine or None, Decimal(str(row[cost_i])))
            url = props.get("nextLink") or ""
        if len(currencies) > 1:
            raise OperationError(
                f"Azure Cost Management answered in several currencies: {', '.join(sorted(currencies))}"
            )
        bill.currency = currencies.pop() if currencies else "USD"
        return bill
