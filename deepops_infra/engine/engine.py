"""Stack lifecycle rules, independent of how Pulumi is reached."""

from typing import Any

from deepops_infra.engine.base import Backend, EngineError, OnEvent, StackOutputs, classify
from deepops_infra.errors import OperationError


def _quiet(_: str) -> None:
    return None


class Engine:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def check(self) -> None:
        self.backend.check()

    def recover(self, stack: str, on_event: OnEvent = _quiet) -> bool:
        """After a crash: clear pending operations, then refresh so state matches the cloud.

        Returns whether anything had to be recovered.
        """
        pending = self.backend.pending_operations(stack)
        if not pending:
            return False
        on_event(f"recovering {stack}: {len(pending)} interrupted operation(s), refreshing from the cloud")
        self.backend.clear_pending(stack)
        self.backend.refresh(stack, on_event)
        return True

    def up(
        self, stack: str, config: dict[str, Any], on_event: OnEvent = _quiet, secret: frozenset[str] = frozenset()
    ) -> StackOutputs:
        """Create or update the stack from `config`; an EngineError says whether another offer may work."""
        if self.backend.exists(stack):
            self.recover(stack, on_event)
        self.backend.set_config(stack, config, secret)
        try:
            return self.backend.up(stack, on_event)
        except EngineError:
            raise
        except Exception as exc:
            message = " ".join(str(exc).split())
            raise EngineError(f"pulumi up {stack}: {message[-800:]}", classify(message)) from None

    def destroy(self, stack: str, on_event: OnEvent = _quiet) -> None:
        """Destroy the stack's resources; the stack is removed only once its state holds none."""
        if not self.backend.exists(stack):
            return
        self.recover(stack, on_event)
        try:
            self.backend.destroy(stack, on_event)
        except Exception as exc:
            message = " ".join(str(exc).split())
            raise EngineError(f"pulumi destroy {stack}: {message[-800:]}") from None
        left = self.backend.resource_count(stack)
        if left:
            raise OperationError(f"pulumi destroy {stack} finished but {left} resource(s) remain in its state; kept")
        self.backend.remove(stack)

    def refresh(self, stack: str, on_event: OnEvent = _quiet) -> None:
        if self.backend.exists(stack):
            self.recover(stack, on_event)
            self.backend.refresh(stack, on_event)
