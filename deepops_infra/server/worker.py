"""Launches and releases run in worker processes, not in the server's threads: an Ansible play
or a Pulumi update keeps its Python work (event handling, SDK calls) off the process that answers
requests, and a crash in one cannot take the API down. Workers are started with `spawn` (never a
fork of a threaded server) and keep one ledger engine each."""

import contextlib
from pathlib import Path
from typing import Any

_LEDGERS: dict[str, Any] = {}


def _open(home: str) -> tuple[Any, Any]:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger

    settings = Settings(home=Path(home))
    url = settings.ledger_url
    if url not in _LEDGERS:
        _LEDGERS[url] = Ledger(url)
    return settings, _LEDGERS[url]


def _lifecycle(settings: Any, ledger: Any, cloud: str) -> Any:
    from deepops_infra.lifecycle import Lifecycle
    from deepops_infra.progress import make_progress
    from deepops_infra.providers import get_provider

    return Lifecycle(settings, ledger, get_provider(cloud, settings, ledger), make_progress(enabled=False))


def launch(home: str, machine_id: str, fallbacks: list[Any], keep_on_failure: bool = False) -> None:
    """Take a recorded machine to ready; a failure is recorded on the machine by the lifecycle."""
    from deepops_infra.images import get_image
    from deepops_infra.ledger import store

    settings, ledger = _open(home)
    with ledger.read() as session:
        machine = store.find_machine(session, machine_id)
    lifecycle = _lifecycle(settings, ledger, machine.cloud)
    with contextlib.suppress(Exception):
        lifecycle.launch(machine, get_image(machine.image), keep_on_failure=keep_on_failure, fallbacks=fallbacks)


def release(home: str, machine_id: str, reason: str) -> dict[str, Any]:
    from deepops_infra.ledger import store
    from deepops_infra.lifecycle import cost_line
    from deepops_infra.views import machine_json

    settings, ledger = _open(home)
    with ledger.read() as session:
        machine = store.find_machine(session, machine_id)
    ended = _lifecycle(settings, ledger, machine.cloud).down(machine, reason)
    return {"machine": machine_json(ended.machine, ended.cost), "cost_line": cost_line(ended)}


def warm() -> None:
    """Import the lifecycle once per worker, before the first request needs it."""
    import deepops_infra.lifecycle
    import deepops_infra.providers  # noqa: F401


NICENESS = 10


def lower_priority() -> None:
    """Workers (and the plays and Pulumi runs they start) yield the CPU to the process answering
    requests: a launch taking a second longer matters less than every page waiting on it."""
    import os

    from deepops_infra.ansible import PLAY_NICENESS

    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    os.environ[PLAY_NICENESS] = str(NICENESS)  # plays start new sessions: see ansible._low_priority_binary
