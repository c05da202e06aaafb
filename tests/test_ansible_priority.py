"""Plays at low CPU priority (DEEPOPS_PLAY_NICENESS, set by the team server's workers): the play
runs through a wrapper that lowers its session's autogroup and gives the same result."""

import os
import sys
from pathlib import Path

import pytest

from deepops_infra.ansible import PLAY_NICENESS, run_playbook
from deepops_infra.config import Settings
from deepops_infra.pool import PoolHost


@pytest.mark.ansible
def test_a_play_through_the_low_priority_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_home()
    host = PoolHost(name="localhost", connection="local", python=sys.executable)
    monkeypatch.delenv(PLAY_NICENESS, raising=False)
    plain = run_playbook(settings, "detect", [host], {}, ident="detect-plain")
    wrapper = settings.ansible_dir / "low-priority" / "ansible-playbook"
    assert plain.ok, plain.failure
    assert not wrapper.exists()

    monkeypatch.setenv(PLAY_NICENESS, "10")
    niced = run_playbook(settings, "detect", [host], {}, ident="detect-niced")
    assert niced.ok, niced.failure
    assert niced.stats == plain.stats  # the same play, the same report
    assert wrapper.stat().st_mode & 0o777 == 0o700
    text = wrapper.read_text()
    assert "/proc/self/autogroup" in text and text.rstrip().endswith('"$@"')
    real = text.splitlines()[-1].split()[1]
    assert os.path.basename(real) == "ansible-playbook" and os.access(real, os.X_OK) and real != str(wrapper)
