from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aep.observability.health import ServingState
from aep.observability.store_monitor import StoreMonitor
from aep.pipeline.core import Outlet, Pipeline
from aep.settings import AckMode, HealthSettings
from aep.storage.base import StoreError
from tests.helpers.support import block_of
from tests.unit.test_pipeline import FakeStore, make_pipeline, records, wait_until


class PingableStore(FakeStore):
    """FakeStore whose ping can fail or hang, and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.hang = False
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.down:
            raise StoreError("connection refused")


async def start_monitor(
    store: PingableStore, pipeline: Pipeline, *, down_after: float = 0.2
) -> tuple[ServingState, asyncio.Task[None]]:
    serving = ServingState(["adevents.v1.AdEventService"])
    await serving.set_serving(True)
    monitor = StoreMonitor(
        pipeline,
        serving,
        HealthSettings(store_down_after=down_after, store_check_interval=0.02),
        ping_timeout=0.1,
    )
    return serving, asyncio.create_task(monitor.run())


def store_healthy(pipeline: Pipeline) -> bool:
    return pipeline.store_state.healthy


async def stop(task: asyncio.Task[None], pipeline: Pipeline) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pipeline.drain(5)


async def test_not_serving_after_failing_longer_than_the_threshold_then_serving_again(
    tmp_path: Path,
) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path)
    serving, task = await start_monitor(store, pipeline, down_after=0.2)
    store.down = True
    await asyncio.sleep(0.1)
    assert serving.serving  # failing, but not yet for store_down_after
    assert not store_healthy(pipeline)
    await wait_until(lambda: not serving.serving, timeout_s=2)
    assert "connection refused" in pipeline.store_state.detail
    store.down = False
    await wait_until(lambda: serving.serving, timeout_s=2)
    assert store_healthy(pipeline)
    await stop(task, pipeline)


async def test_a_short_blip_keeps_serving(tmp_path: Path) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path)
    serving, task = await start_monitor(store, pipeline, down_after=0.5)
    changes: list[bool] = []
    for _ in range(3):
        store.down = True
        await asyncio.sleep(0.1)
        store.down = False
        await asyncio.sleep(0.1)
        changes.append(serving.serving)
    assert changes == [True, True, True]
    await stop(task, pipeline)


async def test_a_hanging_ping_counts_as_a_failure(tmp_path: Path) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path)
    serving, task = await start_monitor(store, pipeline, down_after=0.2)
    store.hang = True
    await wait_until(lambda: not serving.serving, timeout_s=3)
    assert "no answer within" in pipeline.store_state.detail
    await stop(task, pipeline)


async def test_failed_writes_alone_turn_it_not_serving(tmp_path: Path) -> None:
    store = PingableStore()
    store.fail_next = 10**6  # writes fail; pings would too
    store.down = True
    pipeline, _ = make_pipeline(store, tmp_path, size=1, attempts=10**6)
    serving, task = await start_monitor(store, pipeline, down_after=0.2)
    pipeline.offer(block_of(records(0, 1)), 10, AckMode.ACCEPTED)
    await wait_until(lambda: not serving.serving, timeout_s=2)
    store.fail_next = 0
    store.down = False
    await wait_until(lambda: serving.serving and pipeline.pending_events == 0, timeout_s=5)
    assert store.stored == ["e0"]
    await stop(task, pipeline)


async def test_no_pings_while_writes_succeed(tmp_path: Path) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path, size=1, flush=0.001)
    serving, task = await start_monitor(store, pipeline)
    await asyncio.sleep(0.05)
    idle_pings = store.pings
    assert idle_pings >= 1  # idle: the monitor pings
    for index in range(40):
        pipeline.offer(block_of(records(index, 1)), 10, AckMode.ACCEPTED)
        await asyncio.sleep(0.005)
    busy_pings = store.pings - idle_pings
    assert busy_pings <= 2, busy_pings
    assert serving.serving
    await stop(task, pipeline)


async def test_shutdown_keeps_not_serving_although_the_store_is_fine(tmp_path: Path) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path)
    serving, task = await start_monitor(store, pipeline)
    await serving.begin_shutdown()
    await asyncio.sleep(0.1)  # several monitor rounds with a healthy store
    assert not serving.serving
    await stop(task, pipeline)


async def test_a_crashed_pipeline_task_is_not_serving(tmp_path: Path) -> None:
    store = PingableStore()
    pipeline, _ = make_pipeline(store, tmp_path)
    serving, task = await start_monitor(store, pipeline)

    async def crash() -> None:
        raise RuntimeError("bug")

    crashed = asyncio.create_task(crash())
    await asyncio.gather(crashed, return_exceptions=True)
    pipeline.lanes[0].tasks.append(crashed)  # as if a writer had died of this bug
    await wait_until(lambda: not serving.serving, timeout_s=2)
    pipeline.lanes[0].tasks.remove(crashed)
    await stop(task, pipeline)


@pytest.mark.parametrize("queued", [0, 7])
async def test_drain_of_a_pipeline_that_never_started_dead_letters_the_queue(
    tmp_path: Path, queued: int
) -> None:
    from aep.pipeline.dead_letters import DeadLetterQueue
    from aep.pipeline.ledger import Ledger
    from aep.settings import BatchSettings, QueueSettings, RetrySettings

    stats = Ledger()
    pipeline = Pipeline(
        [Outlet(PingableStore(), DeadLetterQueue(tmp_path / "dlq"))],
        stats,
        batch=BatchSettings(),
        queue=QueueSettings(),
        retry=RetrySettings(),
    )
    if queued:
        pipeline.offer(block_of(records(0, queued)), 70, AckMode.ACCEPTED)
    assert await pipeline.drain(1) is (queued == 0)
    assert stats.events_dead_lettered == queued
    assert pipeline.pending_events == 0


async def test_a_ping_that_passes_while_writes_fail_does_not_keep_it_serving(
    tmp_path: Path,
) -> None:
    """A full disk: the file store's ping (the directory is writable) passes, writes fail."""
    store = PingableStore()
    store.fail_next = 10**6
    pipeline, _ = make_pipeline(store, tmp_path, size=1, attempts=10**6)
    serving, task = await start_monitor(store, pipeline, down_after=0.2)
    pipeline.offer(block_of(records(0, 1)), 10, AckMode.ACCEPTED)
    await wait_until(lambda: not serving.serving, timeout_s=2)
    assert store.pings > 0  # pinged meanwhile, and every ping passed
    store.fail_next = 0
    await wait_until(lambda: serving.serving and pipeline.pending_events == 0, timeout_s=5)
    assert store.stored == ["e0"]
    await stop(task, pipeline)


async def test_after_writes_gave_up_only_a_write_makes_it_serving_again(tmp_path: Path) -> None:
    store = PingableStore()
    store.fail_next = 2
    pipeline, stats = make_pipeline(store, tmp_path, size=1, attempts=2)
    serving, task = await start_monitor(store, pipeline, down_after=0.2)
    pipeline.offer(block_of(records(0, 1)), 10, AckMode.ACCEPTED)
    await wait_until(lambda: stats.events_dead_lettered == 1, timeout_s=2)
    await wait_until(lambda: not serving.serving, timeout_s=2)
    pings = store.pings
    await wait_until(lambda: store.pings >= pings + 5, timeout_s=2)
    assert not serving.serving  # pings pass, no write since: still down
    store.down = True  # a ping failure on top, then the pings pass again
    await wait_until(lambda: store.pings >= pings + 8, timeout_s=2)
    store.down = False
    await wait_until(lambda: store.pings >= pings + 12, timeout_s=2)
    assert not serving.serving
    pipeline.offer(block_of(records(1, 1)), 10, AckMode.ACCEPTED)  # the store takes writes again
    await wait_until(lambda: serving.serving, timeout_s=2)
    assert pipeline.store_state.healthy
    await stop(task, pipeline)
