"""``services.shim.hibernate.next_idle_s``: a shim woken soon after it slept waits longer before
it sleeps again, so a container that prints (or is exec'd into) every few tens of seconds does
not pay an interpreter's start-up each time."""

from __future__ import annotations

from services.shim.hibernate import MAX_BACKOFF, next_idle_s


def test_a_fresh_shim_waits_the_setting() -> None:
    assert next_idle_s(30.0, None, 1000.0) == 30.0


def test_woken_sooner_than_it_waited_doubles_up_to_the_bound() -> None:
    idle = 30.0
    for _ in range(10):
        idle = next_idle_s(30.0, {"idle_s": idle, "slept_at": 1000.0}, 1000.0 + idle / 2)
    assert idle == 30.0 * MAX_BACKOFF


def test_a_long_sleep_resets_it() -> None:
    assert next_idle_s(30.0, {"idle_s": 240.0, "slept_at": 1000.0}, 1000.0 + 241.0) == 30.0
    assert next_idle_s(30.0, {"idle_s": 30.0, "slept_at": 1000.0}, 1000.0 + 29.0) == 60.0
