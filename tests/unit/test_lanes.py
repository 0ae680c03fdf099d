"""Several stores, a lane each: every store gets every event; a store that is down
fills only its own lane, then its spill on disk, and catches up from it in order.

The stores are fakes of our own EventStore (in memory, with a gate that holds
their writes); the spill is the real one on disk (tests/integration/test_lanes.py
does the same with the real server on real Redis and file stores).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aep.events.block import EventBatch
from aep.pipeline.admission import AdmissionRefusedError, RefusalKind
from aep.pipeline.core import CommitFailedError, Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger
from aep.pipeline.spill import Spill
from aep.pipeline.wal import WriteAheadLog, read_segment
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import StoreError, WriteResult
from tests.helpers.support import block_of


class GatedStore:
    """In-memory EventStore, idempotent by event_id; `down()` makes its writes fail,
    `hold()` makes them wait (a slow store), `up()` undoes both."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.stored: list[str] = []  # in the order written
        self._ids: set[str] = set()
        self.failing = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.writes = 0

    @property
    def name(self) -> str:
        return self._name

    def down(self) -> None:
        self.failing = True

    def hold(self) -> None:
        self.gate.clear()

    def up(self) -> None:
        self.failing = False
        self.gate.set()

    async def open(self) -> None:
        pass

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        await self.gate.wait()
        if self.failing:
            raise StoreError(f"{self._name} is down")
        self.writes += 1
        fresh = [i for i in batch.event_ids if i not in self._ids]
        self._ids.update(fresh)
        self.stored.extend(fresh)
        return WriteResult(written=len(fresh), duplicates=len(batch) - len(fresh))

    async def ping(self) -> None:
        if self.failing:
            raise StoreError(f"{self._name} is down")

    async def close(self) -> None:
        pass


def ids(start: int, count: int) -> list[str]:
    return [f"e{i:06d}" for i in range(start, start + count)]


def block(start: int, count: int):  # type: ignore[no-untyped-def]
    return block_of([{"event_id": event_id} for event_id in ids(start, count)])


def build(
    stores: list[GatedStore],
    tmp_path: Path,
    *,
    max_events: int = 50,
    spill_bytes: int | None = 1 << 20,
    segment_bytes: int = 4096,
    attempts: int = 1_000_000,
    wal: WriteAheadLog | None = None,
    ledger: Ledger | None = None,
    workers: int = 1,
) -> tuple[Pipeline, Ledger]:
    """One writer per lane by default, so that the order a store sees is the
    order its lane fed it (several writers may finish batches out of order)."""
    ledger = ledger or Ledger()
    outlets = [
        Outlet(
            store,
            DeadLetterQueue(tmp_path / "dead-letter" / store.name),
            Spill(
                tmp_path / "spill" / store.name, max_bytes=spill_bytes, segment_bytes=segment_bytes
            )
            if spill_bytes is not None
            else None,
        )
        for store in stores
    ]
    pipeline = Pipeline(
        outlets,
        ledger,
        batch=BatchSettings(size=10, flush_interval=0.01, worker_pool_size=workers),
        queue=QueueSettings(max_events=max_events, max_bytes=10**9),
        retry=RetrySettings(max_attempts=attempts, initial_backoff=0.005, max_backoff=0.02),
        wal=wal,
    )
    return pipeline, ledger


async def start(pipeline: Pipeline) -> None:
    await pipeline.open_spills()
    pipeline.start()


async def wait_until(condition: object, timeout_s: float = 10.0, what: str = "") -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what or condition}")
        await asyncio.sleep(0.005)


def spill_files(tmp_path: Path, store: str) -> list[Path]:
    return sorted((tmp_path / "spill" / store).glob("wal-*.log"))


def balanced(ledger: Ledger, pipeline: Pipeline, offered: int) -> None:
    """The identity per store: every offered event is written, a duplicate,
    dead-lettered, lost or still pending in that store's lane."""
    for lane in pipeline.lanes:
        book = ledger.book(lane.name)
        settled = book.events_written + book.events_duplicate + book.events_dead_lettered
        accounted = settled + book.events_lost + lane.pending_events
        assert accounted == offered + book.events_spill_recovered, lane.name


async def test_every_store_receives_every_event_and_committed_waits_for_all(
    tmp_path: Path,
) -> None:
    mongo, redis = GatedStore("mongodb"), GatedStore("redis")
    pipeline, ledger = build([mongo, redis], tmp_path, workers=2)
    await start(pipeline)
    redis.hold()
    done = pipeline.offer(block(0, 5), 50, AckMode.COMMITTED)
    assert done is not None
    await wait_until(lambda: len(mongo.stored) == 5)
    await asyncio.sleep(0.05)
    assert not done.done(), "committed must wait for every listed store"
    redis.up()
    await asyncio.wait_for(done, 5)
    assert mongo.stored == redis.stored == ids(0, 5)
    assert ledger.book("mongodb").events_written == ledger.book("redis").events_written == 5
    assert ledger.events_written == 10  # the sum over the stores
    assert await pipeline.drain(5)
    balanced(ledger, pipeline, 5)


async def test_a_down_store_fills_only_its_lane_then_its_spill_and_catches_up_in_order(
    tmp_path: Path,
) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, ledger = build([file, redis], tmp_path, max_events=50)
    await start(pipeline)
    redis.down()
    offered = 0
    for start_id in range(0, 600, 20):
        pipeline.offer(block(start_id, 20), 200, AckMode.ACCEPTED)  # never refused
        offered += 20
        await asyncio.sleep(0.002)
    await wait_until(lambda: len(file.stored) == offered, what="the healthy store writes all")
    redis_lane = pipeline.lanes[1]
    assert redis_lane.spilling
    await wait_until(lambda: redis_lane.spill is not None and redis_lane.spill.events > 300)
    assert spill_files(tmp_path, "redis"), "the overflow is on disk"
    assert not spill_files(tmp_path, "file") or pipeline.lanes[0].spill_bytes == 0
    assert redis_lane.admission.pending_events <= 50, "memory stays within the lane's bound"
    assert ledger.book("redis").events_spilled > 300
    balanced(ledger, pipeline, offered)

    redis.up()
    await wait_until(lambda: len(redis.stored) == offered, what="redis catches up from its spill")
    assert redis.stored == ids(0, offered), "in arrival order, each once"
    await wait_until(lambda: not redis_lane.spilling, what="the lane leaves spilling")
    await wait_until(lambda: redis_lane.spill is not None and redis_lane.spill.events == 0)
    assert await pipeline.drain(5)
    assert [p.name for p in spill_files(tmp_path, "redis")] == [], "stored segments are deleted"
    balanced(ledger, pipeline, offered)
    assert ledger.events_lost == 0


async def test_new_events_queue_behind_the_spill_so_the_store_sees_arrival_order(
    tmp_path: Path,
) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, _ = build([file, redis], tmp_path, max_events=20)
    await start(pipeline)
    redis.hold()  # slow, not failing
    for start_id in range(0, 200, 10):
        pipeline.offer(block(start_id, 10), 100, AckMode.ACCEPTED)
    redis.up()
    # Offers while the spill is being taken back go behind it.
    for start_id in range(200, 300, 10):
        pipeline.offer(block(start_id, 10), 100, AckMode.ACCEPTED)
        await asyncio.sleep(0.001)
    # Each lane finishes at its own pace: wait for both, then check order.
    await wait_until(lambda: len(redis.stored) == 300 and len(file.stored) == 300)
    assert redis.stored == ids(0, 300)
    assert file.stored == ids(0, 300)
    assert await pipeline.drain(5)


async def test_only_a_full_spill_refuses_and_then_no_lane_takes_the_offer(tmp_path: Path) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, ledger = build([file, redis], tmp_path, max_events=20, spill_bytes=8192)
    await start(pipeline)
    redis.down()
    offered = 0
    refusal: AdmissionRefusedError | None = None
    for start_id in range(0, 10_000, 10):
        try:
            pipeline.offer(block(start_id, 10), 100, AckMode.ACCEPTED)
        except AdmissionRefusedError as error:
            refusal = error
            break
        offered += 10
        await asyncio.sleep(0.001)
    assert refusal is not None, "a full spill refuses"
    print(refusal.message)
    assert refusal.kind is RefusalKind.OVERLOAD
    assert refusal.retry_after_s is not None
    assert "store redis" in refusal.message
    assert "spill.max_bytes=8192" in refusal.message
    assert offered > 20, "the spill took events before it was full"
    await wait_until(lambda: len(file.stored) == offered)
    await asyncio.sleep(0.05)
    assert len(file.stored) == offered, "the refused offer reached no lane"
    redis.up()
    await wait_until(lambda: len(redis.stored) == offered)
    assert redis.stored == ids(0, offered)
    assert await pipeline.drain(5)
    balanced(ledger, pipeline, offered)


async def test_committed_with_a_spilling_store_waits_until_the_spill_is_written(
    tmp_path: Path,
) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, _ = build([file, redis], tmp_path, max_events=10)
    await start(pipeline)
    redis.down()
    waits = []
    for start_id in range(0, 100, 10):
        done = pipeline.offer(block(start_id, 10), 100, AckMode.COMMITTED)
        assert done is not None
        waits.append(done)
    await wait_until(lambda: len(file.stored) == 100)
    await asyncio.sleep(0.05)
    assert not any(done.done() for done in waits)
    redis.up()
    await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert redis.stored == ids(0, 100)
    assert await pipeline.drain(5)


async def test_the_log_lets_go_once_the_down_store_has_the_events_in_its_spill(
    tmp_path: Path,
) -> None:
    wal = WriteAheadLog(tmp_path / "wal", 4096)
    await asyncio.to_thread(wal.open)
    wal.start()
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, _ = build([file, redis], tmp_path, max_events=10, wal=wal)
    await start(pipeline)
    redis.down()
    for start_id in range(0, 300, 10):
        durable = pipeline.offer(block(start_id, 10), 100, AckMode.DURABLE)
        assert durable is not None
        await durable
    await wait_until(lambda: len(file.stored) == 300)
    # The redis lane holds at most its 10 queued events in memory; the rest are
    # in its spill, so the log may drop every segment but the ones still needed.
    await wait_until(
        lambda: sum(p.stat().st_size for p in (tmp_path / "wal").glob("wal-*.log")) < 3 * 4096,
        what="the write-ahead log shrinks while redis is down",
    )
    redis.up()
    await wait_until(lambda: len(redis.stored) == 300)
    assert await pipeline.drain(5)
    await wal.close()
    leftover = [read_segment(p)[0] for p in (tmp_path / "wal").glob("wal-*.log")]
    assert not [b for blocks in leftover for b in blocks], "nothing left to replay"


async def test_what_a_spill_holds_at_shutdown_is_written_first_at_the_next_start(
    tmp_path: Path,
) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, ledger = build([file, redis], tmp_path, max_events=10)
    await start(pipeline)
    redis.down()
    for start_id in range(0, 200, 10):
        pipeline.offer(block(start_id, 10), 100, AckMode.ACCEPTED)
        await asyncio.sleep(0.001)
    await wait_until(lambda: len(file.stored) == 200)
    assert not await pipeline.drain(0.3), "redis could not be written: not drained"
    # The queued events of the redis lane were dead-lettered by the drain; the
    # spilled ones stay in the spill.
    kept = sum(len(b) for p in spill_files(tmp_path, "redis") for b in read_segment(p)[0])
    dead = ledger.book("redis").events_dead_lettered
    assert kept > 150 and kept + dead == 200, (kept, dead)

    redis_again = GatedStore("redis")
    second, second_ledger = build([GatedStore("file"), redis_again], tmp_path, max_events=10)
    await start(second)
    assert second_ledger.book("redis").events_spill_recovered == kept
    await wait_until(lambda: len(redis_again.stored) == kept)
    assert redis_again.stored == sorted(redis_again.stored), "in the order spilled"
    assert await second.drain(5)
    assert spill_files(tmp_path, "redis") == []
    balanced(second_ledger, second, 0)


async def test_one_store_without_a_spill_refuses_as_before(tmp_path: Path) -> None:
    store = GatedStore("file")
    pipeline, _ = build([store], tmp_path, max_events=20, spill_bytes=None)
    await start(pipeline)
    store.hold()
    pipeline.offer(block(0, 20), 100, AckMode.ACCEPTED)
    with pytest.raises(AdmissionRefusedError, match=r"queue\.max_events=20"):
        pipeline.offer(block(20, 1), 5, AckMode.ACCEPTED)
    store.up()
    assert await pipeline.drain(5)


async def test_a_store_past_the_retry_bound_fails_committed_naming_it(tmp_path: Path) -> None:
    file, redis = GatedStore("file"), GatedStore("redis")
    pipeline, ledger = build([file, redis], tmp_path, attempts=2)
    await start(pipeline)
    redis.down()
    done = pipeline.offer(block(0, 5), 50, AckMode.COMMITTED)
    assert done is not None
    with pytest.raises(CommitFailedError) as failed:
        await asyncio.wait_for(done, 5)
    assert "store redis" in failed.value.reason
    assert failed.value.dead_lettered == 5
    assert file.stored == ids(0, 5), "the other store still has them"
    assert ledger.book("redis").events_dead_lettered == 5
    assert ledger.book("file").events_dead_lettered == 0
    dead = list((tmp_path / "dead-letter" / "redis").glob("*.jsonl"))
    assert dead, "in redis's own dead-letter folder"
    assert await pipeline.drain(5)
