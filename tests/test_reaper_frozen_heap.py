"""A reaper cycle keeps the process's earlier objects out of the garbage collector's passes while it
runs, collects young objects less often (reaper/heap.py), and always gives both back,
also when the cycle fails."""

import gc
from types import SimpleNamespace

import pytest

from deepops_infra.reaper.cycle import Reaper
from deepops_infra.reaper.heap import YOUNG_THRESHOLD, cycle_heap


def test_a_cycle_runs_with_the_earlier_heap_frozen_and_unfreezes_it() -> None:
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    during: list[tuple[int, tuple[int, ...]]] = []
    seen = lambda dry_run: during.append((gc.get_freeze_count(), gc.get_threshold())) or "report"  # noqa: E731
    assert Reaper.run(SimpleNamespace(_cycle=seen), dry_run=True) == "report"  # type: ignore[arg-type]
    frozen, thresholds = during[0]
    assert frozen > 0 and thresholds == (max(before[0], YOUNG_THRESHOLD), *before[1:])
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before


def test_a_failing_cycle_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), cycle_heap():
        frozen = gc.get_freeze_count()
        made = [[] for _ in range(100)]  # what the cycle makes is collected as usual, not frozen
        assert frozen > 0 and gc.get_freeze_count() == frozen and gc.is_tracked(made)
        raise RuntimeError("provider down")
    assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] < YOUNG_THRESHOLD


def test_cycles_overlapping_in_threads_give_the_defaults_back_once_the_last_ends() -> None:
    before = gc.get_threshold()
    first, second = cycle_heap(), cycle_heap()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs: settings stay
    assert gc.get_threshold()[0] == max(before[0], YOUNG_THRESHOLD) and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
