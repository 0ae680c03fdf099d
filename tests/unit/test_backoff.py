"""Exponential backoff between retries."""

from __future__ import annotations

from aep.pipeline.backoff import backoff_delay


def test_the_delay_doubles_from_initial_up_to_maximum() -> None:
    delays = [backoff_delay(attempt, 0.1, 1.0, jitter=False) for attempt in range(1, 7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_waits_half_to_all_of_the_delay() -> None:
    for attempt in (1, 3, 10):
        full = backoff_delay(attempt, 0.1, 5.0, jitter=False)
        jittered = [backoff_delay(attempt, 0.1, 5.0) for _ in range(200)]
        assert all(full / 2 <= delay <= full for delay in jittered)
        assert len(set(jittered)) > 1


def test_a_retry_loop_without_an_attempt_limit_never_overflows() -> None:
    # database.startup=wait retries opening the store for as long as it is down.
    assert backoff_delay(10_000, 1.0, 5.0, jitter=False) == 5.0
    assert 2.5 <= backoff_delay(10**9, 1.0, 5.0) <= 5.0
