"""The write path: one Pulumi project per cloud (stacks/<cloud>), one stack per machine.

`Engine` holds the logic (recover a crashed stack before anything else, classify failures,
remove a stack only after a confirmed destroy) over a `Backend`, the few operations the Pulumi
Automation API provides. `PulumiBackend` is the real one; tests put a fake in its place.
"""

from deepops_infra.engine.base import Backend, EngineError, StackOutputs
from deepops_infra.engine.engine import Engine

__all__ = ["Backend", "Engine", "EngineError", "StackOutputs", "open_engine"]


def open_engine(settings, cloud: str) -> Engine:  # type: ignore[no-untyped-def]
    """The engine for a cloud's project with the configured backend (imports Pulumi only now)."""
    from deepops_infra.engine.pulumi_backend import PulumiBackend

    return Engine(PulumiBackend(settings, cloud))
