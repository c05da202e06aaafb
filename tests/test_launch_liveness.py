"""Killed launches (issue 13, item 5): a play dies with the process that started it, and a machine
whose launcher is dead is failed, torn down and closed by the next reaper cycle, whatever
setup_timeout says; a live launcher (or a machine written before launchers held locks) is left alone."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.config import Settings
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.liveness import LAUNCHER_EVENT, LaunchLocks
from deepops_infra.ledger.schema import GpuLease, UsageInterval
from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.settings import ReaperSettings
from tests.conftest import wait_for
from tests.reaper_fakes import FakeProvider, add_machine, settings_for


def play_processes(home: Path) -> list[int]:
    """Live processes of plays run for this DEEPOPS_HOME: Ansible's environment names its folder."""
    marker = f"ANSIBLE_HOME={Settings(home=home).ansible_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(entry))
    return found


def end_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


SLEEPY_PLAY = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Say it runs, then take a long time
      ansible.builtin.shell: "touch {{ flag }} && exec sleep 600"
"""

LAUNCHER = """
import sys
from pathlib import Path

import deepops_infra.ansible as ansible
from deepops_infra.config import Settings
from deepops_infra.pool import PoolHost

home, play, flag = sys.argv[1:]
ansible.playbook = lambda name: Path(play)
settings = Settings(home=Path(home))
settings.ensure_home()
host = PoolHost(name="localhost", connection="local", python=sys.executable)
ansible.run_playbook(settings, "sleepy", [host], {"flag": flag}, ident="sleepy")
"""


@pytest.mark.ansible
def test_a_play_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A real play through ansible-runner against localhost; its launcher killed with SIGKILL (alone,
    not its process group): the play, Ansible's worker (a session of its own) and the task's command
    all end, on their own."""
    home, play, flag = tmp_path / "home", tmp_path / "sleepy.yml", tmp_path / "running"
    play.write_text(SLEEPY_PLAY)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(home), str(play), str(flag)])
    try:
        wait_for(flag.exists, 120, "the play's task to start")
        assert play_processes(home)  # ansible-playbook, its worker, the task's shell and sleep
        launcher.kill()
        launcher.wait(timeout=30)
        wait_for(lambda: play_processes(home) == [], 60, "the play to end with its launcher")
    finally:
        launcher.kill()
        end_all(play_processes(home))


@pytest.mark.ansible
def test_a_play_that_ends_leaves_no_watcher_behind(tmp_path: Path) -> None:
    from deepops_infra.ansible import run_playbook
    from deepops_infra.pool import PoolHost

    settings = Settings(home=tmp_path / "home")
    settings.ensure_home()
    host = PoolHost(name="localhost", connection="local", python=sys.executable)
    result = run_playbook(settings, "detect", [host], {}, ident="detect")
    assert result.ok, result.failure
    wait_for(lambda: play_processes(settings.home) == [], 30, "the play's watcher to leave with the play")


def _launcher_event(ledger: Ledger, mid: str) -> None:
    """What Lifecycle.record writes when its process holds the machine's launch lock."""
    with ledger.write() as session:
        store.add_event(session, store.find_machine(session, mid), LAUNCHER_EVENT, "launched by a test")


def test_the_reaper_fails_a_launch_whose_launcher_is_gone_whatever_setup_timeout_says(tmp_path, ledger_url):
    settings = settings_for(tmp_path)
    ledger = Ledger(ledger_url)
    fake = FakeProvider()
    with ledger.write() as session:
        tags = {"deepops-managed": "true", "deepops-installation": store.installation_id(session)}
    legacy = add_machine(ledger, status=states.PROVISIONING, age=timedelta(minutes=1))  # no launcher event
    orphaned = add_machine(ledger, status=states.CONFIGURING, age=timedelta(minutes=1))
    launching = add_machine(ledger, status=states.PROVISIONING, age=timedelta(minutes=1))
    failing = add_machine(ledger, status=states.FAILED, age=timedelta(minutes=1))
    for mid in (legacy, orphaned, launching, failing):
        fake.add(mid, tags)
    for mid in (orphaned, launching, failing):
        _launcher_event(ledger, mid)
    locks = LaunchLocks.of(ledger)
    locks.hold(launching)  # a live launcher: this process
    locks.hold(failing)  # ... still tearing its failed machine down
    try:
        reaper = Reaper(settings, ledger, {"fake": fake}, ReaperSettings())  # setup_timeout: 1 h
        report = reaper.run()
        acted = {a.machine_id: (a.kind, a.reason, a.outcome) for a in report.actions}
        assert acted == {orphaned: ("fail", "launcher-dead", "done")}
        assert fake.destroyed == [orphaned]
    finally:
        locks.release(launching)
        locks.release(failing)
    with ledger.read() as session:
        row = store.find_machine(session, orphaned)
        usage = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == orphaned)).all()
        assert row.status == states.FAILED and row.ended_at is not None
        assert usage and max(u.ended_at for u in usage) == row.ended_at
        assert store.find_machine(session, legacy).ended_at is None  # nothing known: setup_timeout holds
    again = Reaper(settings, ledger, {"fake": fake}, ReaperSettings()).run()  # both launchers are gone now
    assert {a.machine_id: (a.kind, a.reason) for a in again.actions} == {
        launching: ("fail", "launcher-dead"),
        failing: ("teardown", "setup-failed"),
    }


def slow_python(tmp_path: Path) -> tuple[Path, Path]:
    """A host `python` that says when configuring reaches it, then takes ten minutes: a launch
    caught in the middle of its configure play."""
    flag = tmp_path / "configuring"
    wrapper = tmp_path / "slow-python"
    wrapper.write_text(f"#!/bin/sh\ntouch {flag}\nexec sleep 600\n")
    wrapper.chmod(0o755)
    return wrapper, flag


def slow_pool(python: Path) -> str:
    return (
        "hosts:\n  - name: localhost\n    connection: local\n"
        f"    python: {python}\n    rates: {{gpu_hour: 2, host_hour: 0.1}}\n"
        "    gpus:\n      - {index: 0, model: A100-80GB}\n"
    )


@pytest.mark.ansible
def test_deepops_up_killed_mid_launch_is_failed_torn_down_and_closed_by_one_cycle(deepops, tmp_path):
    python, flag = slow_python(tmp_path)
    deepops.write_pool(slow_pool(python))
    deepops.ledger().close()  # migrated once, before the launcher and the reaper open it
    up = deepops.popen("up", "--gpus", "A100-80GB:1", "--ttl", "30m", "--yes", "--json")
    try:
        wait_for(lambda: flag.exists() or up.poll() is not None, 240, "the launch to reach configuring")
        assert up.poll() is None, up.communicate()[1]
        [machine] = deepops.json("ls")
        assert machine["status"] == "configuring"
        alive = json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)
        assert [a for a in alive["actions"] if a["machine"] == machine["id"]] == []  # its launcher runs
        up.kill()  # SIGKILL, the launcher alone
        up.communicate(timeout=60)
        wait_for(lambda: play_processes(deepops.home) == [], 60, "the configure play to end with `deepops up`")
    finally:
        up.kill()
        end_all(play_processes(deepops.home))
    report = json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)
    acted = [(a["action"], a["reason"], a["outcome"]) for a in report["actions"] if a["machine"] == machine["id"]]
    assert acted == [("fail", "launcher-dead", "done")], report
    with deepops.ledger().read() as session:
        row = store.find_machine(session, machine["id"])
        usage = session.scalars(select(UsageInterval).where(UsageInterval.machine_id == row.id)).all()
        held = session.scalars(select(GpuLease).where(GpuLease.released_at.is_(None))).all()
    assert row.status == "failed" and row.ended_at is not None and "launcher-dead" in row.status_reason
    assert usage and all(u.ended_at is not None for u in usage) and max(u.ended_at for u in usage) == row.ended_at
    assert held == []  # the GPU is free again
    assert not (deepops.home / "workspaces" / row.id).exists()
