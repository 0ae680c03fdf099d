"""Admission: the bound on accepted-not-yet-written events and bytes, and its refusal."""

from __future__ import annotations

import asyncio

import pytest

from aep.pipeline.admission import Admission, AdmissionRefusedError, RefusalKind
from aep.settings import QueueSettings


def admission(max_events: int = 20, max_bytes: int = 2000) -> Admission:
    return Admission(QueueSettings(max_events=max_events, max_bytes=max_bytes))


def test_reserve_takes_room_up_to_the_bound_and_release_gives_it_back() -> None:
    bound = admission(max_events=20, max_bytes=2000)
    bound.reserve(20, 1000)
    assert (bound.pending_events, bound.pending_bytes) == (20, 1000)
    with pytest.raises(AdmissionRefusedError, match=r"queue\.max_events=20") as refused:
        bound.reserve(1, 10)
    assert refused.value.kind is RefusalKind.OVERLOAD
    assert (bound.pending_events, bound.pending_bytes) == (20, 1000)  # nothing taken
    bound.release(5, 500)
    bound.reserve(5, 500)
    assert (bound.pending_events, bound.pending_bytes) == (20, 1000)


def test_the_byte_bound_refuses_on_its_own() -> None:
    bound = admission(max_events=1000, max_bytes=2000)
    bound.reserve(1, 1900)
    with pytest.raises(AdmissionRefusedError, match=r"queue\.max_bytes=2000"):
        bound.reserve(1, 200)
    bound.reserve(1, 100)  # still fits


def test_check_refuses_like_reserve_without_taking_room() -> None:
    bound = admission(max_events=10)
    bound.check(10, 100)
    assert bound.pending_events == 0
    bound.reserve(10, 100)
    with pytest.raises(AdmissionRefusedError) as refused:
        bound.check(1, 1)
    assert refused.value.kind is RefusalKind.OVERLOAD
    assert bound.pending_events == 10


def test_the_retry_delay_follows_the_drain_rate() -> None:
    bound = admission(max_events=20)
    bound.reserve(20, 100)
    with pytest.raises(AdmissionRefusedError) as idle:
        bound.reserve(10, 10)
    assert idle.value.retry_after_s == 5.0  # nothing drains: the store may be down
    bound.written(300)  # 300 events in the rate window: 100 events/s
    with pytest.raises(AdmissionRefusedError) as draining:
        bound.reserve(10, 10)
    # 10 events over the bound at 100 events/s
    assert draining.value.retry_after_s == pytest.approx(0.1, rel=0.05)


async def test_closing_refuses_everything_and_wakes_whoever_waits_for_room() -> None:
    bound = admission(max_events=10)
    bound.reserve(10, 100)
    waiting = asyncio.create_task(bound.wait_for_room(5, 10, wait_s=10))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    bound.close()
    assert await asyncio.wait_for(waiting, 1) is True  # woken; the offer then refuses
    with pytest.raises(AdmissionRefusedError, match="shutting down") as refused:
        bound.reserve(1, 1)
    assert refused.value.kind is RefusalKind.CLOSING
    assert refused.value.retry_after_s is None


async def test_wait_for_room_ends_when_room_is_freed_or_the_time_is_up() -> None:
    bound = admission(max_events=10)
    bound.reserve(10, 100)
    assert await bound.wait_for_room(1, 1, wait_s=0.05) is False
    waiting = asyncio.create_task(bound.wait_for_room(4, 40, wait_s=10))
    await asyncio.sleep(0.01)
    bound.release(4, 40)
    assert await asyncio.wait_for(waiting, 1) is True
    bound.reserve(4, 40)
    assert await bound.wait_for_room(1, 1, wait_s=0) is False  # full again: no wait either
