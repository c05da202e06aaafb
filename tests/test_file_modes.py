"""Files on disk: $DEEPOPS_HOME is 0700 whoever created it, the SQLite ledger and its -wal/-shm are
0600, Ansible's scratch folders are 0700; a play's artifacts go once it succeeds, a failed play's
are kept for debugging and pruned by age. Checked under a permissive umask (0022), after real
operations: a ledger created and written, real ansible-runner plays on localhost."""

import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepops_infra.config import Settings
from deepops_infra.pool import PoolHost


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loose(root: Path) -> list[str]:
    """Everything under `root` (itself included) that a group or other could read or enter."""
    found = [] if mode(root) & 0o077 == 0 else [f"{root} {mode(root):o}"]
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink() and not stat.S_ISSOCK(path.stat().st_mode) and mode(path) & 0o077:
                found.append(f"{path} {mode(path):o}")
    return found


def ledger_files_while_open(settings: Settings) -> dict[str, int]:
    """Open the home's ledger as the CLI does, write to it, and give the modes of the database and
    its -wal/-shm while the connection holds them (SQLite removes them when the last one closes)."""
    from deepops_infra.cli.common import open_ledger
    from deepops_infra.ledger import store

    ledger = open_ledger(settings)
    with ledger.write() as session:
        store.installation_id(session)
        files = [settings.home / f"ledger.db{suffix}" for suffix in ("", "-wal", "-shm")]
        modes = {f.name: mode(f) for f in files}
    ledger.close()
    return modes


PRIVATE_LEDGER = {"ledger.db": 0o600, "ledger.db-wal": 0o600, "ledger.db-shm": 0o600}


def test_a_new_home_and_ledger_are_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "deep" / "home")
    assert ledger_files_while_open(settings) == PRIVATE_LEDGER
    assert mode(settings.home) == 0o700 and mode(tmp_path / "deep") == 0o700
    assert loose(settings.home) == []


def test_a_home_someone_else_made_is_tightened(tmp_path: Path) -> None:
    """A home made by hand (or by an older version) 0755, with a ledger and WAL files 0644."""
    settings = Settings(home=tmp_path / "home")
    ledger_files_while_open(settings)
    settings.home.chmod(0o755)
    for suffix in ("", "-wal", "-shm"):
        (settings.home / f"ledger.db{suffix}").touch()
        (settings.home / f"ledger.db{suffix}").chmod(0o644)
    assert ledger_files_while_open(settings) == PRIVATE_LEDGER
    assert mode(settings.home) == 0o700
    assert loose(settings.home) == []


def test_a_sqlite_ledger_outside_home_is_0600(tmp_path: Path) -> None:
    from deepops_infra.ledger.db import Ledger

    (tmp_path / "shared").mkdir(mode=0o755)  # a folder IT chose: the file is private, the folder left as it is
    for path in (tmp_path / "shared" / "team.db", tmp_path / "new" / "ledgers" / "team.db"):
        ledger = Ledger(f"sqlite:///{path}")
        with ledger.write():
            pass
        ledger.close()
        assert mode(path) == 0o600
    assert (mode(tmp_path / "shared"), mode(tmp_path / "new"), mode(tmp_path / "new" / "ledgers")) == (
        0o755,
        0o700,
        0o700,
    )


def test_pulumi_state_and_passphrase_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded Pulumi backend's state, the program's private copy and the passphrase."""
    from deepops_infra.engine.pulumi_backend import PulumiBackend

    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    settings = Settings(home=tmp_path / "home")
    backend = PulumiBackend(settings, "gcp")
    env = backend._env()  # what every stack operation runs with
    work = backend.work_dir
    assert env["PULUMI_BACKEND_URL"] == f"file://{settings.home / 'pulumi'}" and (work / "Pulumi.yaml").exists()
    for folder in (settings.home, settings.home / "pulumi", settings.home / "pulumi" / "work", work):
        assert mode(folder) == 0o700, folder
    assert mode(settings.home / "pulumi-passphrase") == 0o600


LOCALHOST = PoolHost(name="localhost", connection="local", python=sys.executable)
REFUSING = PoolHost(name="refusing", connection="ssh", address="127.0.0.1", port=9, user="nobody")


@pytest.mark.ansible
def test_ansible_scratch_is_private_and_artifacts_go(tmp_path: Path) -> None:
    from deepops_infra.ansible import RUN_RETENTION_S, run_playbook

    settings = Settings(home=tmp_path / "home")
    runs = settings.ansible_dir / "runs"
    ok = run_playbook(settings, "detect", [LOCALHOST], {}, ident="detect-ok")
    assert ok.ok, ok.failure
    assert not (runs / "detect-ok").exists()  # a successful play leaves nothing behind

    failed = run_playbook(settings, "detect", [REFUSING], {"marker": "kept"}, ident="detect-failed")
    assert not failed.ok and failed.unreachable
    kept = runs / "detect-failed"
    assert [p.name for p in (kept / "artifacts").iterdir()]  # kept for debugging ...
    assert "kept" in (kept / "env" / "extravars").read_text()
    assert loose(settings.home) == []  # ... readable by its owner only, like all of Ansible's scratch
    for folder in (settings.home, settings.ansible_dir, runs, settings.ansible_dir / "tmp", kept / "artifacts"):
        assert mode(folder) == 0o700, folder

    # A failed run older than the retention is pruned by the next play; a recent one stays.
    stale = time.time() - RUN_RETENTION_S - 3600
    os.utime(kept, (stale, stale))
    again = run_playbook(settings, "detect", [REFUSING], {}, ident="detect-failed-again")
    assert not again.ok
    assert sorted(p.name for p in runs.iterdir()) == ["detect-failed-again"]
