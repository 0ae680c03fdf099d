"""One store's spill: its lane's overflow on local disk, taken back in order.

When a store's lane is full (its store is down or slower than the traffic),
the lane's new events are appended here instead of being refused, until the
spill holds spill.max_bytes. The spill is a write-ahead log of its own
(`<spill.dir>/<store type>/wal-<sequence>.log`, the same record format:
one record per offer, the block's JSON Lines), so every append is fsynced
before it counts, a torn tail is skipped like the log's, and what an
earlier run left is found again at start-up.

While the spill holds events, every new event of that lane goes to it too,
so the store receives them in arrival order. The lane takes the oldest
segment back (take()), one whole segment in memory at a time, as fast as
its queue has room; a segment is deleted once every record read from it is
stored (or dead-lettered). Owned by the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aep.events.block import EventBlock
from aep.pipeline.batcher import Ticket
from aep.pipeline.wal import Segment, WriteAheadLog, frame, read_segment

logger = logging.getLogger(__name__)

# The per-record framing the log adds to a block's bytes.
RECORD_OVERHEAD_BYTES = len(frame(b""))
_IDLE_POLL_S = 0.005
_ROTATE_RETRY_S = 0.5


@dataclass(eq=False)
class SpillSegment:
    """A segment with records not yet taken back, and (ticket, events) of its records in order.

    Only records appended by this run are listed (a ticket is None where nobody
    waits on the offer); records an earlier run left have none.
    """

    segment: Segment
    records: deque[tuple[Ticket | None, int]] = field(default_factory=deque)


def record_bytes(block: EventBlock) -> int:
    """What appending `block` adds to the spill."""
    return len(block.lines) + RECORD_OVERHEAD_BYTES


class Spill:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._log = WriteAheadLog(directory, segment_bytes, on_written=self._written)
        # Bytes reserved by offers whose append has not finished, and how many.
        self._reserved_bytes = 0
        self._reserved = 0
        # Segments whose records were not taken back yet, oldest first.
        self._unread: deque[SpillSegment] = deque()
        # Events in the spill not yet taken back into the lane's queue (there
        # they count against the queue's bound instead).
        self.events = 0
        self.nonempty = asyncio.Event()

    # -- start-up and shutdown ---------------------------------------------------
    def open(self) -> int:
        """Create the folder; what an earlier run left is taken back first. Its event count.

        Blocking (reads every leftover segment once to count it): run it in a thread.
        """
        leftovers = self._log.open()
        events = 0
        for segment in leftovers:
            self._unread.append(SpillSegment(segment))
            events += segment.replay_events
        self.events += events
        return events

    def start(self) -> None:
        self._log.start()
        if self._unread:
            self.nonempty.set()

    async def close(self) -> None:
        """Write what is queued; what was not stored stays on disk for the next start."""
        await self._log.close()

    # -- state -----------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes on disk, and reserved by appends in flight."""
        return self._log.held_bytes() + self._reserved_bytes

    @property
    def empty(self) -> bool:
        """Nothing left to take back and no append in flight."""
        return not self._unread and self._reserved == 0

    def has_room(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.max_bytes

    # -- appends ------------------------------------------------------------------------
    def reserve(self, block: EventBlock) -> None:
        """Hold room for appending `block`, which is about to come; its events count from now."""
        self._reserved_bytes += record_bytes(block)
        self._reserved += 1
        self.events += len(block)

    def unreserve(self, block: EventBlock) -> None:
        """The reserved append will not come (or failed): its events are not here."""
        self._reserved_bytes -= record_bytes(block)
        self._reserved -= 1
        self.events -= len(block)

    async def append(self, block: EventBlock, ticket: Ticket | None) -> None:
        """Append the reserved record and wait for its fsync; raises WalError (not spilled)."""
        try:
            await self._log.append(block, (ticket, len(block)))
        except BaseException:
            self.unreserve(block)
            raise
        self._reserved_bytes -= record_bytes(block)
        self._reserved -= 1

    def _written(self, segment: Segment, tag: object) -> None:
        """The log wrote a record (called in log order, at once): list it for take()."""
        assert isinstance(tag, tuple)
        unread = self._unread
        if not unread or unread[-1].segment is not segment:
            unread.append(SpillSegment(segment))
        unread[-1].records.append(tag)
        self.nonempty.set()

    # -- taking back -------------------------------------------------------------------
    async def take(self) -> tuple[SpillSegment, list[EventBlock]] | None:
        """The oldest segment and its records, held until release(); None when empty.

        The segment appends go to is sealed first (waiting for appends in flight),
        so it is read whole and later appends start a new one.
        """
        while True:
            if not self._unread:
                if self._reserved == 0:
                    return None
                await asyncio.sleep(_IDLE_POLL_S)
                continue
            entry = self._unread[0]
            if entry.segment is self._log.current:
                if not self._log.idle:
                    await asyncio.sleep(_IDLE_POLL_S)
                    continue
                try:
                    self._log.rotate_now()
                except OSError as error:
                    logger.error(
                        "spill: cannot start a new segment; taking the current one back later",
                        extra={"spill": str(self.directory), "error": str(error)},
                    )
                    await asyncio.sleep(_ROTATE_RETRY_S)
                    continue
            self._unread.popleft()
            blocks, _ = await asyncio.to_thread(read_segment, entry.segment.path)
            # One pin per record until it is stored, and one for this hold.
            entry.segment.pending = len(blocks) + 1
            return entry, blocks

    def taken(self, events: int) -> None:
        """Events of one record read back are in the lane's queue now."""
        self.events -= events

    def stored(self, segment: Segment) -> None:
        """One record taken back from `segment` is stored (or dead-lettered)."""
        self._log.committed(segment)

    def release(self, entry: SpillSegment) -> None:
        """Every record of the taken segment is in the lane: drop the hold."""
        self._log.committed(entry.segment)

    def lost(self, events: int) -> None:
        """Events counted in the spill that cannot be read back (a damaged record)."""
        self.events -= events
