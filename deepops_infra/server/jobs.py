"""A machine's detached jobs through the team server (the web page's machine view):

    GET /api/v1/machines/{ref}/jobs             the jobs: state, exit status, start time, command
    GET /api/v1/machines/{ref}/jobs/{job}/log   the end of a job's output (at most LOG_LIMIT bytes)

Only who may open sessions into the machine may read them (its owner, a team-admin of its team,
an it-admin); anyone else gets 404, so another's machine is never named. The server runs the
jobs scripts of deepops_infra/jobs.py in the machine the way any command is run there (the
provider's shell_command, with the server's own keys), bounded in output size and in time.
"""

import contextlib
import os
import signal
import subprocess
import threading
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from deepops_infra.errors import NotFoundError, OperationError, PolicyError
from deepops_infra.server.problems import Problem

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.server.app import Server
    from deepops_infra.server.identity import Caller

API = "/api/v1"
READERS = ("member", "team-admin", "it-admin")  # and of those, only who sees the machine
LOG_LIMIT = 256 * 1024  # the end of a job's output the page shows
LIST_LIMIT = 1024 * 1024
SECONDS = 30.0  # for the machine to answer (an SSH pool host: one ssh connection first)


def _machine(server: "Server", who: "Caller", ref: str) -> "Machine":
    """The running machine when the caller may open it; 404 for anyone else (any role)."""
    if who.role not in READERS:
        raise Problem(404, f"no machine {ref!r} visible to you")
    try:
        m = server.service().get_machine(ref, who)
    except (NotFoundError, PolicyError) as exc:
        raise Problem(
            404, str(exc) if isinstance(exc, NotFoundError) else f"no machine {ref!r} visible to you"
        ) from None
    if m.ended_at is not None:
        raise Problem(409, f"{m.id} is {m.status}: its jobs ended with it")
    return m  # type: ignore[no-any-return]


def bounded_run(argv: list[str], limit: int, seconds: float = SECONDS) -> tuple[int, bytes, str]:
    """(exit status, at most `limit` bytes of stdout, the start of stderr) of `argv`; the whole
    process group is ended when it outlives `seconds` or writes more than `limit`."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )

    late = threading.Event()

    def end() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def too_late() -> None:
        late.set()
        end()

    timer = threading.Timer(seconds, too_late)
    timer.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read(limit)
        if proc.stdout.read(1):
            end()  # more than it may write: its exit status says it was killed
        err = proc.stderr.read(4096).decode("utf-8", "replace")
        code = proc.wait()
    finally:
        timer.cancel()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    if late.is_set():
        raise OperationError(f"the machine did not answer within {seconds:.0f}s")
    return code, out, err


def _in_machine(server: "Server", m: "Machine", argv: list[str], limit: int) -> tuple[int, bytes, str]:
    provider = server.service().provider_for(m.cloud)
    return bounded_run(provider.shell_command(m, argv), limit)


def list_jobs(server: "Server", m: "Machine") -> list[dict[str, Any]]:
    from deepops_infra import jobs

    code, out, err = _in_machine(server, m, jobs.list_command(), LIST_LIMIT)
    if code != 0:
        raise OperationError(f"listing the jobs of {m.id} failed (exit {code}): {' '.join(err.split())[:200]}")
    return [j.to_json() for j in jobs.parse_list(out.decode("utf-8", "replace"))]


def job_log(server: "Server", m: "Machine", job: str) -> dict[str, Any]:
    from deepops_infra import jobs

    argv = jobs.logs_command(jobs.check_job_id(job), follow=False, last_bytes=LOG_LIMIT + 1)
    code, out, err = _in_machine(server, m, argv, LOG_LIMIT + 1)
    if code == jobs.NOT_FOUND:
        raise Problem(404, f"no job {job!r} in {m.id}")
    if code != 0:
        raise OperationError(f"reading {job} of {m.id} failed (exit {code}): {' '.join(err.split())[:200]}")
    truncated = len(out) > LOG_LIMIT
    text = out[-LOG_LIMIT:].decode("utf-8", "replace")
    return {"machine": m.id, "job": job, "output": text, "truncated": truncated}


def register_jobs(app: FastAPI, server: "Server", Who: Any) -> None:
    """The jobs routes; `Who` is the app's authenticated caller type."""

    @app.get(API + "/machines/{ref}/jobs", tags=["jobs"], summary="A machine's jobs (deepops exec)")
    def machine_jobs(who: Who, ref: str) -> dict[str, Any]:
        m = _machine(server, who, ref)
        return {"machine": m.id, "jobs": list_jobs(server, m)}

    @app.get(API + "/machines/{ref}/jobs/{job}/log", tags=["jobs"], summary="The end of a job's output")
    def machine_job_log(who: Who, ref: str, job: str) -> dict[str, Any]:
        from deepops_infra.jobs import check_job_id

        check_job_id(job)  # 422 before the machine is looked up
        return job_log(server, _machine(server, who, ref), job)
