"""Idle rules: when may a project be put to sleep?"""

from __future__ import annotations

import pytest

from gateway.activity import SharedActivity, is_idle, seconds_until_idle

NOW = 1_000_000.0


def idle(**kw: object) -> bool:
    args: dict[str, object] = {
        "now_wall_s": NOW, "idle_timeout_s": 30.0, "last_activity_wall_s": NOW - 60, "in_flight": 0, "held": 0,
    }
    args.update(kw)
    return is_idle(**args)  # type: ignore[arg-type]


def test_idle_after_the_timeout_with_nothing_in_flight() -> None:
    assert idle()


def test_exactly_at_the_timeout_is_idle() -> None:
    assert idle(last_activity_wall_s=NOW - 30)


def test_just_before_the_timeout_is_not_idle() -> None:
    assert not idle(last_activity_wall_s=NOW - 29.999)


@pytest.mark.parametrize("kw", [{"in_flight": 1}, {"held": 1}, {"shared": SharedActivity(open=1)}])
def test_anything_in_flight_or_held_keeps_it_awake_forever(kw: dict[str, object]) -> None:
    assert not idle(**kw, last_activity_wall_s=NOW - 10**6)


def test_a_replica_that_did_not_answer_keeps_it_awake_forever() -> None:
    assert not idle(shared=SharedActivity(unknown=("gw-b",)), last_activity_wall_s=NOW - 10**6)
    assert not idle(shared=SharedActivity(NOW - 10**6, 0, ("gw-b",)), last_activity_wall_s=NOW - 10**6)


def test_no_recorded_activity_is_never_idle() -> None:
    assert not idle(last_activity_wall_s=None)
    assert not idle(last_activity_wall_s=None, shared=SharedActivity())


def test_recent_activity_on_another_replica_keeps_it_awake() -> None:
    assert not idle(last_activity_wall_s=NOW - 60, shared=SharedActivity(NOW - 5))
    assert not idle(last_activity_wall_s=None, shared=SharedActivity(NOW - 5))


def test_the_latest_of_local_and_shared_activity_counts() -> None:
    assert idle(last_activity_wall_s=NOW - 60, shared=SharedActivity(NOW - 45))
    assert idle(last_activity_wall_s=None, shared=SharedActivity(NOW - 45))
    assert not idle(last_activity_wall_s=NOW - 1, shared=SharedActivity(NOW - 45))


def test_per_project_timeout_is_used() -> None:
    assert not idle(idle_timeout_s=120.0)
    assert idle(idle_timeout_s=0.5, last_activity_wall_s=NOW - 1)


def test_clock_stepping_back_is_not_idle() -> None:
    assert not idle(last_activity_wall_s=NOW + 100)


def test_seconds_until_idle() -> None:
    assert seconds_until_idle(now_wall_s=NOW, idle_timeout_s=30, last_activity_wall_s=NOW - 10) == 20
    assert seconds_until_idle(now_wall_s=NOW, idle_timeout_s=30, last_activity_wall_s=NOW - 100) == 0
    assert seconds_until_idle(now_wall_s=NOW, idle_timeout_s=30, last_activity_wall_s=None) is None
