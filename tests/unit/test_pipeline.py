from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from aep.events.block import EventBatch
from aep.events.schema import EventRecord
from aep.pipeline.admission import AdmissionRefusedError, RefusalKind
from aep.pipeline.core import CommitFailedError, Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger
from aep.pipeline.wal import WriteAheadLog, read_segment
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import StoreError, WriteResult
from tests.helpers.support import block_of


class FakeStore:
    """In-memory EventStore whose writes can be made to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return "fake"

    async def open(self) -> None:
        pass

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("store is down")
        ids = batch.event_ids
        stored = {i for batch in self.batches for i in batch}
        fresh = [i for i in ids if i not in stored]
        self.batches.append(fresh)
        return WriteResult(written=len(fresh), duplicates=len(ids) - len(fresh))

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def stored(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


def records(start: int, count: int) -> list[EventRecord]:
    return [{"event_id": f"e{i}"} for i in range(start, start + count)]


def make_pipeline(
    store: FakeStore,
    tmp_path: Path,
    *,
    size: int = 10,
    flush: float = 60.0,
    workers: int = 2,
    max_events: int = 10_000,
    max_bytes: int = 10**9,
    attempts: int = 3,
) -> tuple[Pipeline, Ledger]:
    stats = Ledger()
    pipeline = Pipeline(
        [Outlet(store, DeadLetterQueue(tmp_path / "dlq"))],
        stats,
        batch=BatchSettings(size=size, flush_interval=flush, worker_pool_size=workers),
        queue=QueueSettings(max_events=max_events, max_bytes=max_bytes),
        retry=RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.01),
    )
    pipeline.start()
    return pipeline, stats


async def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_flushes_when_batch_size_is_reached(tmp_path: Path) -> None:
    store = FakeStore()
    pipeline, stats = make_pipeline(store, tmp_path, size=10, flush=60.0)
    for index in range(25):
        pipeline.offer(block_of(records(index, 1)), 10, AckMode.ACCEPTED)
    await wait_until(lambda: len(store.batches) == 2)
    assert [len(b) for b in store.batches] == [10, 10]
    assert pipeline.pending_events == 5  # the rest waits for size or the interval
    assert await pipeline.drain(5)
    assert sorted(store.stored) == sorted(f"e{i}" for i in range(25))
    assert stats.batches_written == 3


async def test_flushes_on_the_interval_when_the_batch_is_not_full(tmp_path: Path) -> None:
    store = FakeStore()
    pipeline, _ = make_pipeline(store, tmp_path, size=1000, flush=0.05)
    pipeline.offer(block_of(records(0, 3)), 30, AckMode.ACCEPTED)
    await asyncio.sleep(0.01)
    assert store.batches == []
    await wait_until(lambda: len(store.batches) == 1, timeout_s=2)
    assert store.batches == [["e0", "e1", "e2"]]
    await pipeline.drain(5)


async def test_a_large_submission_is_split_into_batches(tmp_path: Path) -> None:
    store = FakeStore()
    pipeline, _ = make_pipeline(store, tmp_path, size=10, workers=1)
    done = pipeline.offer(block_of(records(0, 35)), 350, AckMode.COMMITTED)
    assert done is not None
    await asyncio.wait_for(pipeline.drain(5), 5)
    await done
    assert sorted(len(b) for b in store.batches) == [5, 10, 10, 10]
    assert pipeline.pending_bytes == 0


async def test_queue_full_by_events_refuses_at_once(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # nothing drains
    pipeline, _ = make_pipeline(store, tmp_path, size=5, max_events=20)
    pipeline.offer(block_of(records(0, 20)), 100, AckMode.ACCEPTED)
    with pytest.raises(AdmissionRefusedError, match=r"queue\.max_events=20") as refused:
        pipeline.offer(block_of(records(20, 1)), 5, AckMode.ACCEPTED)
    assert refused.value.kind is RefusalKind.OVERLOAD
    assert refused.value.retry_after_s == 5.0  # nothing drained yet: the longest delay
    store.gate.set()
    assert await pipeline.drain(5)
    pipeline_after = pipeline.pending_events
    assert pipeline_after == 0


async def test_queue_full_by_bytes(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    pipeline, _ = make_pipeline(store, tmp_path, max_bytes=2000)
    pipeline.offer(block_of(records(0, 1)), 1900, AckMode.ACCEPTED)
    with pytest.raises(AdmissionRefusedError, match=r"queue\.max_bytes=2000"):
        pipeline.offer(block_of(records(1, 1)), 200, AckMode.ACCEPTED)
    pipeline.offer(block_of(records(2, 1)), 100, AckMode.ACCEPTED)  # still fits
    store.gate.set()
    assert await pipeline.drain(5)


async def test_committed_future_resolves_after_the_write(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    pipeline, _ = make_pipeline(store, tmp_path, size=1)
    done = pipeline.offer(block_of(records(0, 1)), 10, AckMode.COMMITTED)
    assert done is not None
    await asyncio.sleep(0.05)
    assert not done.done()
    store.gate.set()
    await asyncio.wait_for(done, 2)
    assert store.stored == ["e0"]
    await pipeline.drain(5)


async def test_failed_writes_are_retried(tmp_path: Path) -> None:
    store = FakeStore()
    store.fail_next = 2
    pipeline, stats = make_pipeline(store, tmp_path, size=5, attempts=3)
    done = pipeline.offer(block_of(records(0, 5)), 50, AckMode.COMMITTED)
    assert done is not None
    await asyncio.wait_for(done, 5)
    assert store.stored == [f"e{i}" for i in range(5)]
    assert stats.write_failures == 2
    assert stats.events_dead_lettered == 0
    assert pipeline.store_state.healthy
    await pipeline.drain(5)


async def test_past_the_retry_bound_the_batch_is_dead_lettered(tmp_path: Path) -> None:
    store = FakeStore()
    store.fail_next = 3
    pipeline, stats = make_pipeline(store, tmp_path, size=4, attempts=3)
    done = pipeline.offer(block_of(records(0, 4)), 40, AckMode.COMMITTED)
    assert done is not None
    with pytest.raises(CommitFailedError, match="store is down"):
        await asyncio.wait_for(done, 5)
    assert stats.events_dead_lettered == 4
    assert not pipeline.store_state.healthy
    lines = [
        orjson.loads(line)
        for path in (tmp_path / "dlq").glob("dead-letter-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert [line["event"]["event_id"] for line in lines] == ["e0", "e1", "e2", "e3"]
    assert all("store is down" in line["reason"] and line["attempts"] == 3 for line in lines)
    await pipeline.drain(5)


async def test_drain_writes_everything_accepted_then_refuses(tmp_path: Path) -> None:
    store = FakeStore()
    pipeline, stats = make_pipeline(store, tmp_path, size=7, flush=60.0)
    for index in range(0, 100, 3):
        pipeline.offer(block_of(records(index, 3)), 30, AckMode.ACCEPTED)
    assert await pipeline.drain(5)
    assert len(store.stored) == 102
    assert stats.events_written == 102
    with pytest.raises(AdmissionRefusedError) as refused:
        pipeline.offer(block_of(records(500, 1)), 10, AckMode.ACCEPTED)
    assert refused.value.kind is RefusalKind.CLOSING


async def test_drain_timeout_dead_letters_what_is_left(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # the store never answers
    pipeline, stats = make_pipeline(store, tmp_path, size=5, workers=1)
    pipeline.offer(block_of(records(0, 23)), 230, AckMode.ACCEPTED)
    assert not await pipeline.drain(0.2)
    dead = [
        orjson.loads(line)["event"]["event_id"]
        for path in (tmp_path / "dlq").glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert sorted(dead) == sorted(f"e{i}" for i in range(23))
    assert stats.events_dead_lettered == 23
    assert pipeline.pending_events == 0


async def test_durable_events_the_dead_letter_file_could_not_take_stay_in_the_log(
    tmp_path: Path,
) -> None:
    """The write-ahead log holds the last copy of durably acknowledged events: when
    neither the store nor the dead-letter file took them, their segment is kept so
    that the next start replays them, instead of being deleted as "committed"."""
    store = FakeStore()
    store.fail_next = 3
    stats = Ledger()
    (tmp_path / "dlq").write_text("a file where the dead-letter folder should be")
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=1024)
    assert wal.open() == []
    wal.start()
    pipeline = Pipeline(
        [Outlet(store, DeadLetterQueue(tmp_path / "dlq"))],
        stats,
        batch=BatchSettings(size=4, flush_interval=60.0, worker_pool_size=1),
        queue=QueueSettings(max_events=100, max_bytes=10**6),
        retry=RetrySettings(max_attempts=3, initial_backoff=0.001, max_backoff=0.01),
        wal=wal,
    )
    pipeline.start()
    logged = pipeline.offer(block_of(records(0, 4)), 40, AckMode.DURABLE)
    assert logged is not None
    await logged  # the durable ack is given here
    await wait_until(lambda: stats.events_lost == 4)
    await pipeline.drain(5)
    await wal.close()

    reopened = WriteAheadLog(tmp_path / "wal", segment_bytes=1024)
    leftovers = reopened.open()
    replayable = [
        str(record["event_id"])
        for leftover in leftovers
        for submission in read_segment(leftover.path)[0]
        for record in submission.records()
    ]
    print(f"acknowledged=4 stored=0 dead-lettered=0 lost=4 kept in the log={len(replayable)}")
    assert replayable == ["e0", "e1", "e2", "e3"]
