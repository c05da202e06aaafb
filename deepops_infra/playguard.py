"""Plays die with the process that started them (stdlib only: it runs as ansible-playbook's stand-in).

ansible-runner starts a play in a pseudo-terminal with SIGHUP ignored, and Ansible runs each task in
a worker of its own session: a launcher killed with SIGKILL leaves its play, its workers and their
commands running for as long as the tasks take. ansible.run_playbook starts every play through a
wrapper that runs this file: it forks a watcher beside the play, then becomes ansible-playbook (the
same process, so ansible-runner's own signals and cancellation reach the play as before). Every
process of the play carries the play's random token in its environment (DEEPOPS_PLAY_RUN, set by
run_playbook); once the launcher (DEEPOPS_PLAY_LAUNCHER, its pid) is gone the watcher ends every
process of this user carrying that token, however it was started (new sessions included), and exits.
When the play ends first, the watcher exits and touches nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

TOKEN_VAR = "DEEPOPS_PLAY_RUN"
LAUNCHER_VAR = "DEEPOPS_PLAY_LAUNCHER"
POLL_SECONDS = 0.5
TERM_GRACE_SECONDS = 3.0


def start_time(pid: int) -> str | None:
    """The process' start time (clock ticks since boot): with the pid, it names one process; None
    when there is no such process or it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of stat; fields[0] is field 3 (the state)


def tagged(token: str) -> list[int]:
    """This user's live processes carrying the token in their environment (never this one)."""
    marker = f"{TOKEN_VAR}={token}".encode()
    me, uid, found = os.getpid(), os.getuid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue  # gone meanwhile, or not readable
    return found


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def end_tagged(token: str, grace: float = TERM_GRACE_SECONDS) -> list[int]:
    """SIGTERM every process carrying the token, SIGKILL those left after `grace`; the pids found."""
    found = tagged(token)
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and tagged(token):
        time.sleep(0.1)
    for _ in range(50):  # a process forked meanwhile is found by the next round
        left = tagged(token)
        if not left:
            break
        found += left
        _signal(left, signal.SIGKILL)
        time.sleep(0.1)
    return sorted(set(found))


def watch(token: str, launcher: int, launcher_started: str, play: int, play_started: str) -> None:
    """Until the play ends: once the launcher is gone, end the play (itself first, so that it starts
    no new task) and every process carrying its token."""
    while start_time(play) == play_started:
        if start_time(launcher) != launcher_started:
            _signal([play], signal.SIGTERM)
            end_tagged(token)
            return
        time.sleep(POLL_SECONDS)


def _detach_watcher(token: str, launcher: int, launcher_started: str) -> None:
    """Fork the watcher (twice: it is nobody's child, and nothing waits for it), its stdio on
    /dev/null so that ansible-runner sees the end of the play's output when the play ends."""
    play = os.getpid()
    play_started = start_time(play) or ""
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return
    try:
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch(token, launcher, launcher_started, play, play_started)
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: playguard.py ANSIBLE_PLAYBOOK [ARGS...]\n")
        return 2
    token = os.environ.get(TOKEN_VAR)
    launcher = int(os.environ.get(LAUNCHER_VAR) or 0)
    if token and launcher and os.path.isdir("/proc"):  # (without /proc, as before: no watcher)
        launcher_started = start_time(launcher)
        if os.getppid() != launcher or launcher_started is None:
            sys.stderr.write("deepops: the process that started this play is gone; not running it\n")
            return 1
        _detach_watcher(token, launcher, launcher_started)
    os.execv(argv[1], argv[1:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
