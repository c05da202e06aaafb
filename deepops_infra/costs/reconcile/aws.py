"""AWS Cost Explorer: GetCostAndUsage for the month, grouped by the `deepops-machine` tag.

Settings (config.yaml `aws:`): `endpoint_url` (a private endpoint; also how tests reach moto),
`endpoints: {ce: ...}` (Cost Explorer's own, wins), `profile` (a named credentials profile).
Credentials come from the usual boto3 chain; the call needs only `ce:GetCostAndUsage`.
Cost Explorer is a global service answered in us-east-1. Its data lags about a day, and the
current month is marked Estimated until AWS finalizes it.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from deepops_infra.config import Config
from deepops_infra.costs.period import Period
from deepops_infra.costs.reconcile import MACHINE_TAG, Bill, BillingSource
from deepops_infra.errors import OperationError

METRIC = "UnblendedCost"


@dataclass
class CostExplorer(BillingSource):
    endpoint_url: str | None = None
    profile: str | None = None
    cloud: str = "aws"

    @classmethod
    def from_config(cls, config: Config) -> "CostExplorer":
        section = config.section("aws")
        endpoints = section.get("endpoints")
        endpoint = (endpoints.get("ce") if isinstance(endpoints, dict) else None) or section.get("endpoint_url")
        profile = section.get("profile")
        return cls(endpoint_url=str(endpoint) if endpoint else None, profile=str(profile) if profile else None)

    def client(self) -> Any:
        import boto3

        session = boto3.Session(profile_name=self.profile) if self.profile else boto3.Session()
        return session.client("ce", region_name="us-east-1", endpoint_url=self.endpoint_url)

    def fetch(self, period: Period) -> Bill:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        request: dict[str, Any] = {
            "TimePeriod": {"Start": period.start.strftime("%Y-%m-%d"), "End": period.end.strftime("%Y-%m-%d")},
            "Granularity": "MONTHLY",
            "Metrics": [METRIC],
            "GroupBy": [{"Type": "TAG", "Key": MACHINE_TAG}],
        }
        bill = Bill(cloud="aws")
        currencies: set[str] = set()
        try:
            while True:
                page = client.get_cost_and_usage(**request)
                for result in page.get("ResultsByTime", []):
                    bill.estimated = bill.estimated or bool(result.get("Estimated"))
                    for group in result.get("Groups", []):
                        metric = group["Metrics"][METRIC]
                        currencies.add(metric.get("Unit", "USD"))
                        bill.add(_machine(group["Keys"][0]), Decimal(metric["Amount"]))
                token = page.get("NextPageToken")
                if not token:
                    break
                request["NextPageToken"] = token
        except (BotoCoreError, ClientError) as exc:
            raise OperationError(f"AWS Cost Explorer: {exc}") from None
        if len(currencies) > 1:
            raise OperationError(f"AWS Cost Explorer answered in several currencies: {', '.join(sorted(currencies))}")
        bill.currency = currencies.pop() if currencies else "USD"
        return bill


def _machine(key: str) -> str | None:
    """`deepops-machine$m-1c9e0a42` -> `m-1c9e0a42`; `deepops-machine$` (untagged) -> None."""
    _, _, value = key.partition("$")
    return value or None
