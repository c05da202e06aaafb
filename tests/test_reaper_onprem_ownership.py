"""On-prem ownership is proven, never assumed (real leases on localhost, real plays, real processes):
a lease writes its marker; a directory or process without this installation's marker is never
touched, whatever its name or environment says; an orphan with our marker and no ledger row (a
ledger restored from a backup) is marked first, then its processes are ended and its workspace
quarantined, not deleted; the quarantine is pruned after its retention, and only of our leases."""

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from deepops_infra.ledger import store
from deepops_infra.ledger.schema import Notification, ReaperAction
from tests.test_reaper_onprem import alive, up_many, wait_for

pytestmark = pytest.mark.ansible

CONFIG = """
agent:
  interval: 1s
  checkin_timeout: 1h
reaper:
  setup_timeout: 1h
"""


def config(grace: str | None = None, retention: str | None = None, extra: str = "") -> str:
    """The test's config.yaml; the reaper's orphan grace (1h) and quarantine retention (7d) are the
    defaults unless given."""
    reaper = "".join(f"  {k}: {v}\n" for k, v in (("orphan_grace", grace), ("quarantine_retention", retention)) if v)
    return CONFIG + reaper + extra


def installation(deepops) -> str:  # type: ignore[no-untyped-def]
    with deepops.ledger().write() as session:
        return store.installation_id(session)


def reap(deepops) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(deepops.run("reap", "--once", "--json", check=True).stdout)


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process that is not deepops': started by the test, with whatever cwd and environment."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def in_lease(deepops, mid: str, script: str) -> int:  # type: ignore[no-untyped-def]
    """Start a background process through `deepops ssh` (the lease's env.sh); its PID."""
    out = deepops.run("ssh", mid, "--", "sh", "-c", f"{script} >/dev/null 2>&1 & echo $!", check=True)
    return int(out.stdout.strip())


def destructive(report: dict) -> list[dict]:
    return [a for a in report["actions"] if a["action"] not in ("warn", "mark-orphan")]


def test_foreign_directories_and_processes_are_never_touched(sqlite_deepops, tmp_path):
    deepops = sqlite_deepops
    deepops.write_config(config())
    inst = installation(deepops)
    root = deepops.home / "workspaces"
    userdata = root / "m-userdata"  # a user's own directory that happens to look like a lease
    userdata.mkdir(parents=True)
    (userdata / "important.txt").write_text("the thesis\n")
    other = root / "m-0ther001"  # made by another installation sharing the root
    (other / ".deepops").mkdir(parents=True)
    (other / ".deepops/lease.json").write_text(json.dumps({"installation_id": "inst-0ther", "machine_id": other.name}))
    moved = root / "m-c0py0001"  # a copy of another lease of ours: its marker names another machine
    (moved / ".deepops").mkdir(parents=True)
    (moved / ".deepops/lease.json").write_text(json.dumps({"installation_id": inst, "machine_id": "m-0r1g1n01"}))
    env = {**os.environ, "DEEPOPS_MACHINE": "m-userdata"}
    foreign = [
        start(["sleep", "600"], tmp_path, env),  # carries the variable only
        start(["sleep", "600"], userdata, env),  # and runs inside the directory
        start(["sleep", "600"], other, {**os.environ, "DEEPOPS_MACHINE": other.name}),
    ]
    try:
        for cycle in range(4):  # never even marked: the default grace, then a short one, changes nothing
            if cycle == 2:
                deepops.write_config(config(grace="1s"))
            report = reap(deepops)
            assert destructive(report) == [] and report["errors"] == [], (cycle, report)
            assert not [a for a in report["actions"] if a["action"] == "mark-orphan"]
            assert report["resources"] == {"unmanaged": 2, "other-installation": 1}
            time.sleep(1.2)
        assert (userdata / "important.txt").read_text() == "the thesis\n"
        assert other.is_dir() and moved.is_dir() and not (root / ".deepops-quarantine").exists()
        assert all(p.poll() is None for p in foreign)
    finally:
        for p in foreign:
            p.kill()
            p.wait()
    with deepops.ledger().read() as session:
        assert session.scalars(select(ReaperAction)).all() == []


def test_a_lease_writes_its_marker_and_release_ends_only_what_is_inside_it(sqlite_deepops, tmp_path):
    deepops = sqlite_deepops
    deepops.write_config(config())
    [lease] = up_many(deepops, ["--ttl", "30m", "--idle-timeout", "30m"])
    workspace = deepops.home / "workspaces" / lease["id"]
    marker_file = workspace / ".deepops/lease.json"
    marker = json.loads(marker_file.read_text())
    assert marker["installation_id"] == installation(deepops) and marker["machine_id"] == lease["id"]
    assert marker["created_at"].endswith("Z") and len(marker["lease_key"]) == 32
    assert stat.S_IMODE(marker_file.stat().st_mode) == 0o600 and stat.S_IMODE(workspace.stat().st_mode) == 0o700
    inside = in_lease(deepops, lease["id"], "setsid sleep 600")  # cwd in the workspace
    away = in_lease(deepops, lease["id"], "(cd / && exec setsid sleep 600)")  # left it; has the lease key
    # Someone else's processes that claim the lease by its variable (and even its workspace path).
    forged_env = {**os.environ, "DEEPOPS_MACHINE": lease["id"], "DEEPOPS_WORKSPACE": str(workspace)}
    forged = start(["sleep", "600"], tmp_path, forged_env)
    wrong_key = start(["sleep", "600"], tmp_path, {**forged_env, "DEEPOPS_LEASE_KEY": "0" * 32})
    try:
        report = reap(deepops)
        assert report["actions"] == [] and report["resources"] == {"ours": 1}
        deepops.run("down", lease["id"], "--yes", check=True)
        wait_for(lambda: not alive(inside) and not alive(away), 30, what="the lease's own processes to end")
        assert forged.poll() is None and wrong_key.poll() is None
        assert not workspace.exists()
    finally:
        for p in (forged, wrong_key):
            p.kill()
            p.wait()


def test_the_release_role_touches_only_a_workspace_with_our_marker(tmp_path):
    """The role checks the marker itself (a stale listing, a path from an old ledger): without this
    installation's marker for the machine, neither the workspace nor a process in it is touched;
    with it, its processes end and the workspace is moved to quarantine when one is given."""
    from deepops_infra.ansible import run_playbook
    from deepops_infra.config import Settings
    from deepops_infra.pool import load_pool

    settings = Settings(home=tmp_path / "home")
    settings.ensure_home()
    host = load_pool(settings.pool_path).get("localhost")
    root = tmp_path / "root"

    def workspace(name: str, marker: dict) -> Path:
        path = root / name
        (path / ".deepops").mkdir(parents=True)
        (path / ".deepops/lease.json").write_text(json.dumps(marker))
        (path / "data.txt").write_text("kept\n")
        return path

    def release(path: Path, quarantine: str = ""):  # type: ignore[no-untyped-def]
        extravars = {
            "onprem_release_machine_id": path.name,
            "onprem_release_installation_id": "inst-me",
            "onprem_release_workspace": str(path),
            "onprem_release_quarantine": quarantine,
        }
        return run_playbook(settings, "release", [host], extravars, ident=f"test-{path.name}")

    theirs = workspace("m-the1rs01", {"installation_id": "inst-0ther", "machine_id": "m-the1rs01"})
    renamed = workspace("m-c0py0001", {"installation_id": "inst-me", "machine_id": "m-0r1g1n01"})
    ours = workspace("m-0urs0001", {"installation_id": "inst-me", "machine_id": "m-0urs0001", "lease_key": "k" * 32})
    procs = {p.name: start(["sleep", "600"], p, dict(os.environ)) for p in (theirs, renamed, ours)}
    try:
        for path in (theirs, renamed):
            result = release(path)
            assert result.ok and result.stats["deepops_release"]["ours"] is False, result.stats
            assert (path / "data.txt").read_text() == "kept\n" and procs[path.name].poll() is None
        quarantine = root / ".deepops-quarantine" / f"{ours.name}-20260101T000000Z"
        result = release(ours, str(quarantine))
        assert result.ok and result.stats["deepops_release"]["quarantined"] is True, result.stats
        wait_for(lambda: procs[ours.name].poll() is not None, 30, what="the lease's process to end")
        assert (quarantine / "data.txt").read_text() == "kept\n" and not ours.exists()
        assert stat.S_IMODE(quarantine.parent.stat().st_mode) == 0o700
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def _backup(db: Path, to: Path) -> None:
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)


def test_a_ledger_restored_from_a_backup_wipes_no_lease_made_since(sqlite_deepops, webhook):
    deepops = sqlite_deepops
    url, received = webhook
    notify = f"notify:\n  webhook_url: {url}\n"
    deepops.write_config(config(extra=notify))
    [before] = up_many(deepops, ["--ttl", "30m", "--idle-timeout", "30m"])
    backup = deepops.home.parent / "ledger-backup.db"
    _backup(deepops.home / "ledger.db", backup)
    [since] = up_many(deepops, ["--ttl", "30m", "--idle-timeout", "30m"])
    workspace = deepops.home / "workspaces" / since["id"]
    (workspace / "checkpoint.pt").write_text("three days of training\n")
    inside = in_lease(deepops, since["id"], "setsid sleep 600")
    away = in_lease(deepops, since["id"], "(cd / && exec setsid sleep 600)")
    agent = int((workspace / ".deepops/agent/agent.pid").read_text())
    _backup(backup, deepops.home / "ledger.db")  # the restore: `since` has no row any more

    first = reap(deepops)  # seen: marked, reported, notified; nothing touched
    [mark] = first["actions"]
    assert (mark["action"], mark["resource"], mark["outcome"]) == ("mark-orphan", str(workspace), "done")
    assert mark["deadline"] and f"no ledger row for {since['id']}" in mark["detail"]
    second = reap(deepops)  # within the grace: still waiting
    assert second["actions"] == [] and any(w["machine"] == since["id"] for w in second["waiting"])
    assert all(alive(pid) for pid in (inside, away, agent)) and (workspace / "checkpoint.pt").exists()
    [message] = [r["text"] for r in received if since["id"] in r["text"]]
    assert "no ledger row" in message and "quarantine" in message

    deepops.write_config(config(grace="1s", extra=notify))
    time.sleep(1.1)
    third = reap(deepops)  # a grace after the mark: its processes end, its data goes to quarantine
    [removal] = third["actions"]
    assert (removal["action"], removal["outcome"]) == ("terminate-orphan", "done"), third
    wait_for(lambda: not any(alive(pid) for pid in (inside, away, agent)), 30, what="the orphan's processes to end")
    [kept] = (deepops.home / "workspaces/.deepops-quarantine").iterdir()
    assert kept.name.startswith(f"{since['id']}-")
    assert (kept / "checkpoint.pt").read_text() == "three days of training\n"
    assert not workspace.exists() and removal["note"].endswith(str(kept))
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert (deepops.home / "workspaces" / before["id"]).is_dir()  # in the backup: a live row, untouched
    assert reap(deepops)["actions"] == []  # kept while its retention runs

    foreign = kept.parent / "m-userdata-20200101T000000Z"  # not ours: no marker, never pruned
    foreign.mkdir()
    deepops.write_config(config(grace="1s", retention="1s"))
    time.sleep(1.1)
    pruned = reap(deepops)
    assert [(a["action"], a["resource"], a["outcome"]) for a in pruned["actions"]] == [
        ("prune-quarantine", str(kept), "done")
    ]
    assert not kept.exists() and foreign.is_dir()
    with deepops.ledger().read() as session:
        traces = [(t.action, t.outcome, t.machine_tag) for t in session.scalars(select(ReaperAction))]
        notes = session.scalars(select(Notification).where(Notification.kind == "reaper-orphan")).all()
    assert traces == [
        ("mark-orphan", "done", since["id"]),
        ("terminate-orphan", "done", since["id"]),
        ("prune-quarantine", "done", since["id"]),
    ]
    assert len(notes) == 1 and notes[0].delivered
    deepops.run("down", before["id"], "--yes", check=True)


def test_prune_only_removes_this_installations_quarantined_leases(tmp_path):
    """workspaces.prune, as the host runs it (stdin, over SSH): marker, machine and age decide."""
    from deepops_infra.providers.onprem import workspaces

    folder = tmp_path / ".deepops-quarantine"

    def entry(name: str, marker: dict | None) -> Path:
        path = folder / name
        (path / ".deepops").mkdir(parents=True)
        if marker is not None:
            (path / ".deepops/lease.json").write_text(json.dumps(marker))
        return path

    old = entry("m-abc-20200101T000000Z", {"installation_id": "inst-me", "machine_id": "m-abc"})
    young = entry("m-def-29990101T000000Z", {"installation_id": "inst-me", "machine_id": "m-def"})
    theirs = entry("m-ghi-20200101T000000Z", {"installation_id": "inst-them", "machine_id": "m-ghi"})
    renamed = entry("m-jkl-20200101T000000Z", {"installation_id": "inst-me", "machine_id": "m-other"})
    bare = entry("m-mno-20200101T000000Z", None)
    odd = entry("notes", {"installation_id": "inst-me", "machine_id": "notes"})
    link = folder / "m-pqr-20200101T000000Z"
    link.symlink_to(old)
    source = Path(workspaces.__file__).read_text()
    proc = subprocess.run(
        [sys.executable, "-", "--prune", str(tmp_path), "86400", "inst-me"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout) == [str(old)]
    assert not old.exists() and all(p.exists() for p in (young, theirs, renamed, bare, odd))
