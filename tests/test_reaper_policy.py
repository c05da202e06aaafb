"""The reaper's policies as pure functions: hand-computed times, every reason, fail-safe reads."""

from datetime import UTC, datetime, timedelta

import pytest

from deepops_infra import states
from deepops_infra.config import TeamPolicy
from deepops_infra.providers.base import Utilization
from deepops_infra.reaper.policy import MachineFacts, evaluate, idle_since, last_active
from deepops_infra.reaper.settings import ReaperSettings
from deepops_infra.yamlfile import FileError

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
RS = ReaperSettings(
    grace=timedelta(minutes=10), setup_timeout=timedelta(minutes=30), max_sample_gap=timedelta(minutes=5)
)
POLICY = TeamPolicy(max_ttl=timedelta(days=3))


def facts(status=states.READY, ready=T0, ttl=timedelta(hours=8), idle=timedelta(hours=1), **kw) -> MachineFacts:
    return MachineFacts(
        id="m-00000001",
        status=status,
        created_at=ready - timedelta(minutes=5),
        ready_at=ready,
        expires_at=ready + ttl,
        idle_timeout=idle,
        last_progress_at=kw.pop("progress", ready),
        **kw,
    )


def minute(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def test_idle_since_walks_back_through_idle_samples_and_stops_at_activity_or_gaps():
    now = minute(100)
    # one-minute samples: active at 40, idle from 41 to 100
    samples = [(minute(m), 60.0, m <= 40) for m in range(30, 101)]
    assert idle_since(samples, now, timedelta(minutes=5)) == minute(40)
    # a 10-minute hole (61..70 missing) is unknown: idle only since the end of the hole
    holed = [s for s in samples if not minute(60) < s[0] < minute(71)]
    assert idle_since(holed, now, timedelta(minutes=5)) == minute(71) - timedelta(minutes=1)
    # an unreadable sample (None) counts as active
    unreadable = [*samples, (minute(90), 60.0, None)]
    assert idle_since(unreadable, now, timedelta(minutes=5)) == minute(90)
    # no samples at all: nothing is known, so not idle
    assert idle_since([], now, timedelta(minutes=5)) == now


def idle_from(at: datetime, now: datetime) -> Utilization:
    return Utilization(at=now, gpu_percent=[0.0], gpu_memory_percent=[3.0], active=False, last_active_at=at)


def test_idle_is_warned_a_grace_before_its_timeout_and_due_at_it():
    f = facts()
    util = idle_from(minute(41), minute(90))
    assert evaluate(f, util, [], minute(90), POLICY, RS) is None  # idle 49 minutes of 60
    due = evaluate(f, util, [], minute(91), POLICY, RS)  # idle 50 minutes: the 10-minute grace starts
    assert due is not None and due.reason == "idle" and due.warn
    assert (due.due_at, due.grace) == (minute(101), timedelta(minutes=10))
    assert due.detail == "idle for 50m (idle timeout 1h)"
    assert due.warning_key("m-00000001") == f"reaper:m-00000001:idle:{int(minute(41).timestamp())}"
    assert due.ends_at(minute(91), RS.grace) == minute(101)  # warned on time: ended at the idle timeout


def test_default_settings_warn_at_50_minutes_and_end_at_60():
    rs = ReaperSettings()  # grace 10m, idle_grace_fraction 0.25
    f = facts(idle=timedelta(hours=1))
    assert evaluate(f, idle_from(T0, minute(49)), [], minute(49), POLICY, rs) is None
    due = evaluate(f, idle_from(T0, minute(50)), [], minute(50), POLICY, rs)
    assert due is not None and due.reason == "idle" and due.due_at == minute(60)
    assert due.ends_at(warned_at=minute(50), default_grace=rs.grace) == minute(60)
    # still idle at 60: due, at the idle timeout and not a grace after it
    later = evaluate(f, idle_from(T0, minute(60)), [], minute(60), POLICY, rs)
    assert later.warning_key(f.id) == due.warning_key(f.id) and later.ends_at(minute(50), rs.grace) == minute(60)
    # a warning sent late (the reaper was down) still gives the owner the whole grace
    assert due.ends_at(warned_at=minute(75), default_grace=rs.grace) == minute(85)


def test_a_short_idle_timeout_shrinks_the_grace():
    rs = ReaperSettings()
    f = facts(idle=timedelta(minutes=10))  # grace: 25% of 10 minutes, not 10 minutes
    assert rs.idle_grace(timedelta(minutes=10)) == timedelta(minutes=2, seconds=30)
    assert evaluate(f, idle_from(T0, minute(7)), [], minute(7), POLICY, rs) is None
    due = evaluate(f, idle_from(T0, minute(7.5)), [], minute(7.5), POLICY, rs)
    assert due is not None and due.reason == "idle" and due.due_at == minute(10)
    assert due.grace == timedelta(minutes=2, seconds=30) and due.ends_at(minute(7.5), rs.grace) == minute(10)
    assert ReaperSettings(idle_grace_fraction=0).idle_grace(timedelta(hours=1)) == timedelta(0)


def test_activity_after_the_warning_keeps_the_machine_and_starts_a_new_episode():
    rs = ReaperSettings()
    f = facts(idle=timedelta(hours=1))
    warned = evaluate(f, idle_from(T0, minute(50)), [], minute(50), POLICY, rs)
    assert warned is not None and warned.reason == "idle"
    # used again at 55: not due any more (the reaper marks it ready), whatever the warning said
    busy = Utilization(
        at=minute(56), gpu_percent=[90.0], gpu_memory_percent=[50.0], active=True, last_active_at=minute(55)
    )
    assert evaluate(f, busy, [], minute(56), POLICY, rs) is None
    assert evaluate(f, idle_from(minute(55), minute(104)), [], minute(104), POLICY, rs) is None
    again = evaluate(f, idle_from(minute(55), minute(105)), [], minute(105), POLICY, rs)
    assert again is not None and again.due_at == minute(115)
    assert again.warning_key(f.id) != warned.warning_key(f.id)  # a new episode: a new warning


def test_idle_grace_fraction_is_a_setting(tmp_path):
    from tests.reaper_fakes import settings_for

    rs = ReaperSettings.load(settings_for(tmp_path, "reaper:\n  grace: 20m\n  idle_grace_fraction: 0.5\n"))
    assert rs.idle_grace(timedelta(hours=1)) == timedelta(minutes=20)
    assert rs.idle_grace(timedelta(minutes=30)) == timedelta(minutes=15)
    with pytest.raises(FileError) as info:
        ReaperSettings.load(settings_for(tmp_path, "reaper:\n  idle_grace_fraction: 2\n"))
    assert "config.yaml:2" in str(info.value) and "reaper.idle_grace_fraction must be from 0 to 1" in str(info.value)


def test_unreadable_signals_never_make_a_machine_idle_but_the_ttl_holds():
    f = facts(ttl=timedelta(hours=8))
    unknown = Utilization(at=minute(300), gpu_percent=[], gpu_memory_percent=[], active=None, last_active_at=T0)
    assert evaluate(f, unknown, [], minute(300), POLICY, RS) is None
    # TTL: warned from expiry - grace (7h50m after ready), due at the expiry itself, busy or not
    busy = Utilization(at=T0, gpu_percent=[99.0], gpu_memory_percent=[80.0], active=True, last_active_at=minute(469))
    assert evaluate(f, busy, [], minute(469), POLICY, RS) is None
    due = evaluate(f, busy, [], minute(470), POLICY, RS)
    assert due is not None and due.reason == "ttl-expired" and due.due_at == T0 + timedelta(hours=8)
    assert due.detail == "TTL ends at 2026-11-21 20:00:00Z"
    assert due.ends_at(minute(470), RS.grace) == T0 + timedelta(hours=8)  # as for idle: ended when due


def test_floors_extend_and_ready_restart_the_idle_clock():
    f = facts(last_extend_at=minute(90))
    util = Utilization(at=minute(120), gpu_percent=[], gpu_memory_percent=[], active=False, last_active_at=minute(10))
    assert last_active(f, util, [], minute(120), RS.max_sample_gap) == minute(90)
    assert evaluate(f, util, [], minute(139), POLICY, RS) is None
    due = evaluate(f, util, [], minute(140), POLICY, RS)  # warned 10 minutes before the idle timeout
    assert due.reason == "idle" and due.due_at == minute(150)


def test_policy_max_ttl_lowered_after_launch_wins_over_the_machine_ttl():
    f = facts(ttl=timedelta(days=2))
    lowered = TeamPolicy(max_ttl=timedelta(hours=4))
    due = evaluate(f, None, [], minute(231), lowered, RS)
    assert due.reason == "policy-max-ttl" and due.due_at == T0 + timedelta(hours=4)


def test_setup_and_teardown_that_stopped_progressing():
    stuck = facts(status=states.CONFIGURING, progress=minute(0))
    assert evaluate(stuck, None, [], minute(29), POLICY, RS) is None
    due = evaluate(stuck, None, [], minute(30), POLICY, RS)
    assert due.reason == "setup-stuck" and not due.warn
    terminating = facts(status=states.TERMINATING, progress=minute(0))
    assert evaluate(terminating, None, [], minute(31), POLICY, RS).reason == "teardown-stuck"
    failed = facts(status=states.FAILED, progress=minute(0))
    assert evaluate(failed, None, [], minute(1), POLICY, RS).reason == "setup-failed"


def test_agent_ended_machine_is_closed_without_warning():
    util = Utilization(at=T0, gpu_percent=[], gpu_memory_percent=[], active=False, ended_by_agent="expired")
    due = evaluate(facts(), util, [], minute(1), POLICY, RS)
    assert due.reason == "agent-ended" and not due.warn


def test_cap_allows_the_absolute_number_and_the_fraction_of_a_big_fleet():
    rs = ReaperSettings(max_actions=20, max_fraction=0.25, fraction_min_fleet=10)
    assert rs.allowed_actions(4) == 20  # a small fleet is capped only by the absolute number
    assert rs.allowed_actions(12) == 3  # floor(0.25 * 12)
    assert rs.allowed_actions(1000) == 20
