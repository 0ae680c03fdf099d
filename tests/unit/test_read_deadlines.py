"""ReadDeadlines: one sweeper task instead of a timer per read (aep/ingest/deadlines.py).

The server-level behaviour (DEADLINE_EXCEEDED for a request that never arrives
whole, a stream ended after server.stream_idle_timeout) is proven over a real
channel in tests/integration/test_hostile_clients.py; these pin the mechanism.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from aep.ingest.deadlines import MAX_RESOLUTION_S, ReadDeadlines


async def test_a_read_that_answers_in_time_returns_its_result() -> None:
    deadlines = ReadDeadlines(1.0)
    assert await deadlines.within(asyncio.sleep(0.01, result="request")) == "request"


async def test_a_read_past_its_timeout_raises_timeout_error_within_the_resolution() -> None:
    deadlines = ReadDeadlines(0.5)
    assert deadlines.resolution_s == pytest.approx(0.05)
    never = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.within(never)
    took = time.monotonic() - started
    assert 0.5 <= took < 0.5 + deadlines.resolution_s + 0.2, took
    assert never.cancelled(), "the read itself is cancelled, as asyncio.timeout() does"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0, "the timeout's cancel is taken back"


async def test_each_read_has_its_own_deadline_and_the_quick_ones_are_untouched() -> None:
    deadlines = ReadDeadlines(0.3)
    loop = asyncio.get_running_loop()

    async def stalled() -> str:
        try:
            await deadlines.within(loop.create_future())
        except TimeoutError:
            return "timed out"
        return "answered"

    async def quick(n: int) -> str:
        for _ in range(n):
            await deadlines.within(asyncio.sleep(0.02))
        return "answered"

    results = await asyncio.gather(stalled(), quick(30), stalled(), quick(5))
    assert list(results) == ["timed out", "answered", "timed out", "answered"]


async def test_a_cancel_from_elsewhere_is_not_turned_into_a_timeout() -> None:
    deadlines = ReadDeadlines(10.0)
    reading = asyncio.create_task(deadlines.within(asyncio.get_running_loop().create_future()))
    await asyncio.sleep(0.01)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading


def sweeping(deadlines: ReadDeadlines) -> bool:
    return deadlines._sweeper is not None


async def test_the_sweeper_runs_only_while_reads_are_waiting() -> None:
    deadlines = ReadDeadlines(30.0)
    assert deadlines.resolution_s == MAX_RESOLUTION_S
    await deadlines.within(asyncio.sleep(0.01))
    await asyncio.sleep(MAX_RESOLUTION_S + 0.1)
    assert not sweeping(deadlines), "no task left behind once nothing is read"
    # And it starts again for the next read.
    never = asyncio.get_running_loop().create_future()
    reading = asyncio.create_task(deadlines.within(never))
    await asyncio.sleep(0.01)
    assert sweeping(deadlines)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading


async def test_reads_ending_near_their_deadline_leave_no_expired_task_behind() -> None:
    # The sweeper may cancel a task whose read finished in the same loop turn:
    # the caller then sees TimeoutError (its deadline did pass), and the task
    # is forgotten either way.
    deadlines = ReadDeadlines(0.1)
    outcomes = []
    for _ in range(20):
        try:
            await deadlines.within(asyncio.sleep(0.1 + deadlines.resolution_s / 2))
            outcomes.append("answered")
        except TimeoutError:
            outcomes.append("timed out")
    assert "timed out" in outcomes, "reads longer than the timeout time out"
    assert deadlines._expired == set(), "no expired task is remembered after its read"
