"""The installation's Pulumi passphrase: processes that ask for it at the same moment, before it
exists, all get the same non-empty value (a stack encrypted with another one could never be
destroyed), and nobody ever reads a partly written file."""

import multiprocessing
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.config import Settings
from deepops_infra.engine.pulumi_backend import PASSPHRASE_FILE, passphrase
from deepops_infra.errors import UserError

WORKERS = 8
TRIALS = 40


def _worker(call: Callable[[Settings], str], homes: list[str], barrier: Any, results: Any) -> None:
    for trial, home in enumerate(homes):
        barrier.wait()  # every worker asks for the same fresh home's passphrase at once
        try:
            value: str = call(Settings(home=Path(home)))
        except BaseException as exc:  # the test reports it: a race must never raise
            value = f"raised {type(exc).__name__}: {exc}"
        results.put((trial, value))


def race(call: Callable[[Settings], str], root: Path, workers: int = WORKERS, trials: int = TRIALS) -> list[set[str]]:
    """The values `workers` real processes got for each of `trials` fresh homes."""
    ctx = multiprocessing.get_context("fork")
    homes = [str(root / f"home-{t}") for t in range(trials)]
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(call, homes, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    seen: list[set[str]] = [set() for _ in range(trials)]
    for _ in range(workers * trials):
        trial, value = results.get(timeout=300)
        seen[trial].add(value)
    for proc in procs:
        proc.join(timeout=60)
    return seen


def test_racing_first_calls_all_get_the_same_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    seen = race(passphrase, tmp_path)
    bad = {t: vs for t, vs in enumerate(seen) if len(vs) != 1 or "" in vs or any(v.startswith("raised") for v in vs)}
    sample = [sorted(bad[t]) for t in list(bad)[:3]]
    assert not bad, f"{len(bad)} of {TRIALS} races gave different, empty or failed answers, e.g. {sample}"
    for trial, values in enumerate(seen):
        home = tmp_path / f"home-{trial}"
        path = home / PASSPHRASE_FILE
        assert path.read_text().strip() == next(iter(values)) and len(next(iter(values))) >= 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(os.listdir(home)) == [PASSPHRASE_FILE]  # no temp file left behind
    assert len({next(iter(values)) for values in seen}) == TRIALS  # each installation its own


def test_an_empty_passphrase_file_is_refused_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    settings = Settings(home=tmp_path / "home")
    settings.ensure_home()
    (settings.home / PASSPHRASE_FILE).write_text("\n")  # left by an interrupted older version
    with pytest.raises(UserError, match="is empty"):
        passphrase(settings)
    assert (settings.home / PASSPHRASE_FILE).read_text() == "\n"  # never silently replaced
