"""What the engine needs from Pulumi, as an interface a test can replace."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from deepops_infra.errors import OperationError

StackOutputs = dict[str, Any]
OnEvent = Callable[[str], None]  # one line of progress per engine event

# Error codes the clouds answer when there is no room or no quota: the next offer may work.
CAPACITY_MARKERS = (
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "Unsupported: Your requested instance type",
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "SkuNotAvailable",
    "AllocationFailed",
)
QUOTA_MARKERS = ("InstanceLimitExceeded", "VcpuLimitExceeded", "QUOTA_EXCEEDED", "QuotaExceeded")


class EngineError(OperationError):
    """A stack operation failed. `kind`: capacity, quota (another offer may work) or other."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        return self.kind in ("capacity", "quota")


def classify(message: str) -> str:
    if any(m in message for m in CAPACITY_MARKERS):
        return "capacity"
    if any(m in message for m in QUOTA_MARKERS):
        return "quota"
    return "other"


class Backend(ABC):
    """One cloud's Pulumi project: stacks by name, their config, and the four operations."""

    project: str

    @abstractmethod
    def check(self) -> None:
        """Raise UserError when the engine cannot run here (no `pulumi` CLI), saying how to fix it."""

    @abstractmethod
    def exists(self, stack: str) -> bool: ...

    @abstractmethod
    def set_config(self, stack: str, config: dict[str, Any], secret: frozenset[str] = frozenset()) -> None:
        """Create the stack if needed and set its whole config (secret keys encrypted)."""

    @abstractmethod
    def up(self, stack: str, on_event: OnEvent) -> StackOutputs: ...

    @abstractmethod
    def destroy(self, stack: str, on_event: OnEvent) -> None: ...

    @abstractmethod
    def refresh(self, stack: str, on_event: OnEvent) -> None: ...

    @abstractmethod
    def pending_operations(self, stack: str) -> list[dict[str, Any]]:
        """Operations a crashed run left in the state (resources that may or may not exist)."""

    @abstractmethod
    def clear_pending(self, stack: str) -> None:
        """Cancel a running update's lock where the backend has one and drop pending operations."""

    @abstractmethod
    def resource_count(self, stack: str) -> int:
        """Resources the stack's state holds, the stack itself not counted."""

    @abstractmethod
    def remove(self, stack: str) -> None: ...
