"""Start-up recovery: the write-ahead log's leftovers go back into the pipeline, booked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aep.pipeline import recovery
from aep.pipeline.core import Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger
from aep.pipeline.wal import WriteAheadLog
from aep.settings import BatchSettings, QueueSettings, RetrySettings
from tests.helpers.support import block_of
from tests.unit.test_pipeline import FakeStore, records, wait_until


async def a_crashed_run(directory: Path, submissions: int, size: int) -> None:
    """Appends that were acknowledged and never reached a store."""
    wal = WriteAheadLog(directory, segment_bytes=4096)
    assert wal.open() == []
    wal.start()
    for index in range(submissions):
        await wal.append(block_of(records(index * size, size)))
    await wal.close()


async def test_leftovers_are_replayed_written_and_deleted(tmp_path: Path) -> None:
    await a_crashed_run(tmp_path / "wal", submissions=30, size=10)
    ledger = Ledger()
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=4096)
    leftovers = await recovery.open_log(wal, ledger)
    assert len(leftovers) > 1  # rotated: several segments to replay
    assert ledger.wal_backlog_events == 300
    wal.start()
    store = FakeStore()
    pipeline = Pipeline(
        [Outlet(store, DeadLetterQueue(tmp_path / "dlq"))],
        ledger,
        batch=BatchSettings(size=25, flush_interval=0.01, worker_pool_size=2),
        queue=QueueSettings(max_events=40, max_bytes=10**6),
        retry=RetrySettings(),
        wal=wal,
    )
    pipeline.start()
    highest = 0

    async def watch() -> None:
        nonlocal highest
        while True:
            highest = max(highest, pipeline.pending_events)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(
        recovery.replay(leftovers, pipeline=pipeline, wal=wal, ledger=ledger, max_queue_fill=0.5),
        10,
    )
    await wait_until(lambda: pipeline.pending_events == 0)
    watcher.cancel()
    assert sorted(store.stored) == sorted(f"e{i}" for i in range(300))
    assert (ledger.events_replayed, ledger.wal_backlog_events) == (300, 0)
    assert ledger.events_written == 300
    assert highest <= 20  # replay kept the queue at wal.replay_max_queue_fill
    await pipeline.drain(5)
    await wal.close()
    assert not list((tmp_path / "wal").glob("wal-*.log"))  # all written: deleted


async def test_a_replay_interrupted_by_the_shutdown_leaves_the_rest_in_the_log(
    tmp_path: Path,
) -> None:
    await a_crashed_run(tmp_path / "wal", submissions=5, size=10)
    ledger = Ledger()
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=4096)
    leftovers = await recovery.open_log(wal, ledger)
    wal.start()
    pipeline = Pipeline(
        [Outlet(FakeStore(), DeadLetterQueue(tmp_path / "dlq"))],
        ledger,
        batch=BatchSettings(),
        queue=QueueSettings(),
        retry=RetrySettings(),
        wal=wal,
    )
    pipeline.start()
    assert await pipeline.drain(5)  # closed before the replay began
    await recovery.replay(leftovers, pipeline=pipeline, wal=wal, ledger=ledger, max_queue_fill=0.5)
    assert (ledger.events_replayed, ledger.wal_backlog_events) == (0, 50)
    await wal.close()
    reopened = WriteAheadLog(tmp_path / "wal", segment_bytes=4096)
    assert sum(segment.replay_events for segment in reopened.open()) == 50
