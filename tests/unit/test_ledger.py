"""The ledger: every counter of the conservation identity, and who books what in the pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aep.pipeline.admission import AdmissionRefusedError, RefusalKind
from aep.pipeline.core import Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger, Rejection, RequestRejection, type_tally
from aep.pipeline.wal import WriteAheadLog
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings
from tests.helpers.support import block_of
from tests.unit.test_pipeline import FakeStore, make_pipeline, records, wait_until


def drift(ledger: Ledger, pending: int) -> int:
    """received + replayed - everything an event can end in; 0 when the books balance."""
    return (
        ledger.events_received
        + ledger.events_replayed
        - ledger.events_rejected
        - ledger.events_written
        - ledger.events_duplicate
        - ledger.events_dead_lettered
        - ledger.events_lost
        - pending
    )


def test_each_verb_books_its_counters() -> None:
    ledger = Ledger()
    by_type = type_tally()
    by_type[1], by_type[2], by_type[3] = 2, 3, 4
    ledger.received(9, by_type, invalid=1)
    ledger.refused_whole(7, Rejection.INVALID)
    ledger.refused_whole(2, Rejection.OVERLOAD)
    ledger.rejected(1, Rejection.UNAVAILABLE)
    ledger.book("file").stored(written=2, duplicates=1)
    ledger.book("file").dead_lettered(saved=3, lost=1)
    ledger.request_refused(RequestRejection.EMPTY)
    assert ledger.events_received == 9 + 7 + 2
    assert ledger.events_received_by_type[1:] == [2, 3, 4]  # refused whole: not by type
    assert (
        ledger.events_rejected_invalid,
        ledger.events_rejected_overload,
        ledger.events_rejected_unavailable,
    ) == (8, 2, 1)
    assert (ledger.events_written, ledger.events_duplicate, ledger.batches_written) == (2, 1, 1)
    assert (ledger.events_dead_lettered, ledger.events_lost) == (3, 1)
    assert ledger.requests_rejected[RequestRejection.EMPTY] == 1
    assert drift(ledger, pending=0) == 0


def test_the_write_ahead_log_backlog_shrinks_as_it_is_replayed() -> None:
    ledger = Ledger()
    ledger.log_opened(quarantined=1, damaged_records=2, skipped_bytes=30, backlog=10)
    ledger.replayed(6, from_backlog=6)
    ledger.backlog_settled(4)
    assert (ledger.events_replayed, ledger.wal_backlog_events) == (6, 0)
    assert drift(ledger, pending=6) == 0  # replayed events are in flight


async def test_the_pipeline_books_its_refusals_once(tmp_path: Path) -> None:
    store = FakeStore()
    store.gate = asyncio.Event()  # nothing drains
    pipeline, ledger = make_pipeline(store, tmp_path, max_events=10)
    ledger.received(10, type_tally(), invalid=0)  # as the servicer does after validation
    pipeline.offer(block_of(records(0, 10)), 100, AckMode.ACCEPTED)
    ledger.received(3, type_tally(), invalid=0)
    with pytest.raises(AdmissionRefusedError):
        pipeline.offer(block_of(records(10, 3)), 30, AckMode.ACCEPTED)
    with pytest.raises(AdmissionRefusedError):
        pipeline.check(4, 40)  # before validation: received and rejected at once
    assert ledger.events_received == 10 + 3 + 4
    assert ledger.events_rejected_overload == 3 + 4
    assert drift(ledger, pipeline.pending_events) == 0
    store.gate.set()
    await wait_until(lambda: pipeline.pending_events == 0)
    assert ledger.events_written == 10
    assert drift(ledger, pipeline.pending_events) == 0
    await pipeline.drain(5)


async def test_a_durable_offer_the_log_refuses_gives_its_room_back(tmp_path: Path) -> None:
    ledger = Ledger()
    wal = WriteAheadLog(tmp_path / "wal", segment_bytes=1024)
    assert wal.open() == []
    wal.start()
    await wal.close()  # every append now fails
    pipeline = Pipeline(
        [Outlet(FakeStore(), DeadLetterQueue(tmp_path / "dlq"))],
        ledger,
        batch=BatchSettings(size=4, flush_interval=60.0, worker_pool_size=1),
        queue=QueueSettings(max_events=100, max_bytes=10**6),
        retry=RetrySettings(),
        wal=wal,
    )
    pipeline.start()
    ledger.received(4, type_tally(), invalid=0)
    logged = pipeline.offer(block_of(records(0, 4)), 40, AckMode.DURABLE)
    assert logged is not None
    assert pipeline.pending_events == 4  # held while the append is in progress
    with pytest.raises(AdmissionRefusedError, match="closed") as refused:
        await logged
    assert refused.value.kind is RefusalKind.LOG_FAILURE
    assert (pipeline.pending_events, pipeline.pending_bytes) == (0, 0)
    assert ledger.events_rejected_unavailable == 4
    assert drift(ledger, pipeline.pending_events) == 0
    await pipeline.drain(5)


async def test_durable_acks_need_the_log(tmp_path: Path) -> None:
    pipeline, _ = make_pipeline(FakeStore(), tmp_path)
    assert not pipeline.durable_acks
    with pytest.raises(ValueError, match="write-ahead log"):
        pipeline.offer(block_of(records(0, 1)), 10, AckMode.DURABLE)
    assert pipeline.pending_events == 0
    await pipeline.drain(5)
