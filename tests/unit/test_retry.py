"""The one retry policy, on a fake clock."""

from __future__ import annotations

import threading

from services.common.retry import Backoff, FakeClock, Retry

NO_JITTER = Backoff(initial=1.0, maximum=4.0, jitter=False)


def test_delays_grow_to_the_cap_and_reset_after_a_success() -> None:
    clock = FakeClock()
    retry = Retry(NO_JITTER, clock=clock)
    stop = threading.Event()
    for _ in range(4):
        assert retry.sleep(stop) == "retry"
    assert clock.now - 1000 == 1 + 2 + 4 + 4
    retry.reset()
    assert retry.delay() == 1.0 and retry.elapsed() == 0.0


def test_jitter_stays_between_half_the_ceiling_and_the_ceiling() -> None:
    backoff = Backoff(initial=2.0, maximum=8.0)
    for attempt, ceiling in [(0, 2), (1, 4), (2, 8), (9, 8)]:
        assert all(ceiling / 2 <= backoff.delay(attempt) <= ceiling for _ in range(200))


def test_a_budget_refuses_a_wait_that_would_end_past_it() -> None:
    clock = FakeClock()
    retry = Retry(NO_JITTER, clock=clock, budget=10.0)
    stop = threading.Event()
    outcomes = [retry.sleep(stop) for _ in range(5)]
    assert outcomes == ["retry", "retry", "retry", "exhausted", "exhausted"]  # 1 + 2 + 4 = 7; +4 > 10
    assert clock.now - 1000 == 7
    assert retry.next_delay(margin=3.0) is None


def test_start_begins_the_budget_before_the_first_failure() -> None:
    clock = FakeClock()
    retry = Retry(NO_JITTER, clock=clock, budget=5.0)
    retry.start()
    clock.advance(4.5)  # the first attempt itself took 4.5 s
    assert retry.next_delay() is None


def test_a_stop_ends_the_wait_at_once_and_the_heartbeat_is_fed_every_second() -> None:
    stop = threading.Event()
    beats: list[float] = []
    clock = FakeClock(on_wait=lambda s: stop.set() if clock.now - 1000 >= 2.5 else None)
    retry = Retry(Backoff(initial=10.0, jitter=False), clock=clock, heartbeat=lambda: beats.append(clock.now))
    assert retry.sleep(stop) == "stopped"
    assert clock.now - 1000 == 3.0  # woke at the first slice after the stop, not after 10 s
    assert len(beats) == 3 and max(clock.waits) <= 1.0
    assert retry.sleep(stop) == "stopped" and clock.now - 1000 == 3.0  # already stopping: no wait
