"""Launches and releases run in worker processes, not in the server's threads: an Ansible play
or a Pulumi update keeps its Python work (event handling, SDK calls) off the process that answers
requests, and a crash in one cannot take the API down. Workers are started with `spawn` (never a
fork of a threaded server) and keep one ledger engine each."""

import contextlib
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

_LEDGERS: dict[str, Any] = {}


class Workers(ProcessPoolExecutor):
    """A pool of worker processes that counts its tasks in flight (queued or running), which
    /metrics reports as launches and releases in flight; warming a worker is not counted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_flight = 0
        self._count_lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        future = super().submit(fn, *args, **kwargs)
        if fn is not warm:
            self._add(1)
            future.add_done_callback(lambda _: self._add(-1))
        return future

    def _add(self, n: int) -> None:
        with self._count_lock:
            self._in_flight += n

    @property
    def in_flight(self) -> int:
        return self._in_flight


def _open(home: str) -> tuple[Any, Any]:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger

    settings = Settings(home=Path(home))
    url = settings.ledger_url
    if url not in _LEDGERS:
        _LEDGERS[url] = Ledger(url)
    return settings, _LEDGERS[url]


def _service(home: str) -> Any:
    from deepops_infra.service.machines import Machines

    return Machines(*_open(home))


def launch(home: str, machine_id: str, keep_on_failure: bool = False) -> None:
    """Take a recorded machine to ready through the machines service (its fallback offers are in
    the ledger); a failure is recorded on the machine by the lifecycle."""
    with contextlib.suppress(Exception):
        _service(home).launch(machine_id, keep_on_failure=keep_on_failure)


def submit_launch(pool: Any, ledger: Any, home: str, machine_id: str, keep_on_failure: bool) -> Any:
    """Hand a recorded machine to a launch worker. The server keeps the machine's launch lock
    (taken when it was recorded: ledger/liveness.py) until the worker is done with it, queued or
    launching: the launch is alive while the server and that worker are, and a release asks it to
    stop instead of tearing down beside it. A worker that dies lets go of it too (its future fails)."""
    from deepops_infra.ledger.liveness import LaunchLocks

    locks = LaunchLocks.of(ledger)
    try:
        future = pool.submit(launch, home, machine_id, keep_on_failure)
    except BaseException:
        locks.release(machine_id)
        raise
    future.add_done_callback(lambda _: locks.release(machine_id))
    return future


def release(home: str, machine_id: str, reason: str) -> dict[str, Any]:
    """Release a machine (the server checked the caller may) through the machines service."""
    return _service(home).release(machine_id, reason).to_json()  # type: ignore[no-any-return]


def warm() -> None:
    """Import the lifecycle once per worker, before the first request needs it."""
    import deepops_infra.lifecycle
    import deepops_infra.providers  # noqa: F401


NICENESS = 10
ORPHAN_CHECK_SECONDS = 2.0


def start(server_pid: int) -> None:
    """Each worker's initializer: lower priority, and an end when the server is gone."""
    lower_priority()
    _exit_when_orphaned(server_pid)


def lower_priority() -> None:
    """Workers (and the plays and Pulumi runs they start) yield the CPU to the process answering
    requests: a launch taking a second longer matters less than every page waiting on it."""
    import os

    from deepops_infra.ansible import PLAY_NICENESS

    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    os.environ[PLAY_NICENESS] = str(NICENESS)  # plays start new sessions: see ansible._low_priority_binary


def _exit_when_orphaned(server_pid: int) -> None:
    """A worker whose server died without stopping it (SIGKILL, a crash) would wait on its task
    queue forever, since it holds that queue's other end itself: it exits once it is reparented
    (the server's pid comes from the server: it may be gone before this runs). A launch it was
    running is then left to the reaper (launcher-dead), like any interrupted one."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="deepops-orphan-check", daemon=True).start()


def stop(executors: list[Any], grace: float) -> None:
    """Stop the server's workers: queued tasks are cancelled, idle workers exit at once, a task in
    flight gets `grace` seconds to finish, then its worker is terminated (killed when it does not
    end: ansible-runner catches SIGTERM). The reaper ends machines whose launch was cut short."""
    import multiprocessing
    import time

    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
    for signal_them in ("terminate", "kill"):
        left = multiprocessing.active_children()
        for child in left:
            getattr(child, signal_them)()
        for child in left:
            child.join(5)
