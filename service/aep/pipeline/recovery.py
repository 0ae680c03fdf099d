"""Start-up recovery: what the write-ahead log holds from earlier runs goes back in.

open_log() opens the log and books what it found; replay() re-submits the
leftover segments in the background, only while the queue is below
wal.replay_max_queue_fill, so that replay cannot starve live traffic. Stores
are idempotent by event_id, so events written before the crash come back as
duplicates. A segment is held while its records are being submitted, so that
it is deleted only once all of them are stored.
"""

from __future__ import annotations

import asyncio
import logging

from aep.pipeline.admission import AdmissionRefusedError
from aep.pipeline.core import Pipeline
from aep.pipeline.ledger import Ledger
from aep.pipeline.wal import REPLAY_BYTES_PER_EVENT, Segment, WriteAheadLog, read_segment

logger = logging.getLogger(__name__)


async def open_log(wal: WriteAheadLog, ledger: Ledger) -> list[Segment]:
    """Open the log (raises OSError); the segments earlier runs left, to replay."""
    leftovers = await asyncio.to_thread(wal.open)
    ledger.log_opened(
        quarantined=wal.quarantined,
        damaged_records=wal.damaged_records,
        skipped_bytes=wal.skipped_bytes,
        backlog=sum(segment.replay_events for segment in leftovers),
    )
    return leftovers


async def replay(
    leftovers: list[Segment],
    *,
    pipeline: Pipeline,
    wal: WriteAheadLog,
    ledger: Ledger,
    max_queue_fill: float,
) -> None:
    """Re-submit the leftover segments' events into the started pipeline, throttled.

    Ends early when the pipeline closes (shutdown): what was not replayed
    stays in its segment for the next start.
    """
    fill_limit = int(pipeline.max_events * max_queue_fill)
    logger.info("replaying the write-ahead log", extra={"segments": len(leftovers)})
    events = 0
    for segment in leftovers:
        # One segment in memory at a time: bounded by wal.segment_bytes.
        try:
            blocks, _ = await asyncio.to_thread(read_segment, segment.path)
        except OSError as error:
            # It stays in the log (and in the backlog) for the next start.
            logger.error(
                "cannot read a write-ahead log segment to replay it",
                extra={"segment": str(segment.path), "error": str(error)},
            )
            continue
        wal.pin(segment)  # the hold
        backlog = segment.replay_events  # of this segment, in the ledger's wal_backlog_events
        for block in blocks:
            nbytes = REPLAY_BYTES_PER_EVENT * len(block)
            while pipeline.memory_pending_events + len(block) > max(fill_limit, len(block)):
                await pipeline.wait_for_room(len(block), nbytes, 0.1)
                await asyncio.sleep(0.01)
            wal.pin(segment)
            try:
                pipeline.resubmit(block, nbytes, segment)
            except AdmissionRefusedError:
                wal.committed(segment)  # undo the pin; the hold keeps the segment
                return
            submitted = min(backlog, len(block))
            backlog -= submitted
            ledger.replayed(len(block), from_backlog=submitted)
            events += len(block)
        ledger.backlog_settled(backlog)
        wal.committed(segment)  # release the hold
    logger.info("write-ahead log replayed", extra={"events": events})
