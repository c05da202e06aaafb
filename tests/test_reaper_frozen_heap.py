"""A reaper cycle keeps the process's earlier objects out of the garbage collector's passes while it
runs (reaper/cycle.py _frozen_heap), and always gives them back, also when the cycle fails."""

import gc
from types import SimpleNamespace

import pytest

from deepops_infra.reaper.cycle import Reaper, _frozen_heap


def test_a_cycle_runs_with_the_earlier_heap_frozen_and_unfreezes_it() -> None:
    assert gc.get_freeze_count() == 0
    during: list[int] = []
    cycle = SimpleNamespace(_cycle=lambda dry_run: during.append(gc.get_freeze_count()) or "report")
    assert Reaper.run(cycle, dry_run=True) == "report"  # type: ignore[arg-type]
    assert during[0] > 0 and gc.get_freeze_count() == 0


def test_a_failing_cycle_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), _frozen_heap():
        frozen = gc.get_freeze_count()
        made = [[] for _ in range(100)]  # what the cycle makes is collected as usual, not frozen
        assert frozen > 0 and gc.get_freeze_count() == frozen and gc.is_tracked(made)
        raise RuntimeError("provider down")
    assert gc.get_freeze_count() == 0
