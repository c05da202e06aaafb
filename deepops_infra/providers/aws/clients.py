"""boto3 clients that honour the configured endpoint override (imported only where used)."""

from typing import Any

from deepops_infra.errors import UserError
from deepops_infra.providers.aws.settings import AwsSettings

PRICING_REGION = "us-east-1"  # the Price List API answers from us-east-1 (and ap-south-1, eu-central-1)
# Clients whose requests deepops builds from fixed shapes only (readpath: GetMetricData, 4 queries per
# machine): botocore's parameter validation of them was half the CPU of a 9,000-machine utilization read.
UNVALIDATED = frozenset({"cloudwatch"})


class Clients:
    def __init__(self, aws: AwsSettings) -> None:
        self.aws = aws
        self._session: Any = None
        self._cache: dict[tuple[str, str], Any] = {}

    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3
            from botocore.exceptions import ProfileNotFound

            try:
                self._session = boto3.session.Session(profile_name=self.aws.profile)
            except ProfileNotFound:
                raise UserError(f"aws.profile {self.aws.profile!r} is not in ~/.aws/config or credentials") from None
        return self._session

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._cache:
            from botocore.config import Config

            self._cache[key] = self.session.client(
                service,
                region_name=region,
                endpoint_url=self.aws.endpoint(service),
                config=Config(
                    retries={"mode": "standard", "max_attempts": 5},
                    read_timeout=self.aws.read_timeout,
                    user_agent_extra="deepops-infra",
                    parameter_validation=service not in UNVALIDATED,
                ),
            )
        return self._cache[key]

    def ec2(self, region: str) -> Any:
        return self.client("ec2", region)

    def cloudwatch(self, region: str) -> Any:
        return self.client("cloudwatch", region)

    def pricing(self) -> Any:
        return self.client("pricing", PRICING_REGION)

    def has_credentials(self) -> tuple[bool, str]:
        """Whether the credential chain yields credentials (no network call)."""
        try:
            creds = self.session.get_credentials()
        except UserError as exc:
            return False, str(exc)
        if creds is None:
            return False, "no AWS credentials: set AWS_PROFILE, run `aws configure`, or use an instance role"
        return True, f"found ({creds.method})"
