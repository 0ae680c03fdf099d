"""Accepted submissions in arrival order, cut into batches of batch.size.

A batch is handed to the writers when batch.size events are queued, or when
its oldest event has waited batch.flush_interval. A large submission is
split over several batches; a batch may hold parts of several submissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aep.events.block import EventBatch, EventBlock
from aep.pipeline.wal import Segment
from aep.settings import BatchSettings


class Ticket:
    """One offer across every lane: what its acknowledgement and its log segment wait for.

    Each lane takes the offer's events as a Submission of its own. The ticket
    is settled once every lane stored (or dead-lettered) them: then a
    committed-mode caller hears back. Its write-ahead log segment may go
    earlier, once every lane holds the events durably: stored, dead-lettered,
    or in the lane's spill on disk.
    """

    __slots__ = (
        "count",
        "dead_lettered",
        "done",
        "failure",
        "lanes_unsafe",
        "lanes_unsettled",
        "lost",
        "wal_segment",
    )

    def __init__(
        self,
        count: int,
        lanes: int,
        done: asyncio.Future[None] | None,
        wal_segment: Segment | None,
    ) -> None:
        self.count = count
        self.lanes_unsettled = lanes
        self.lanes_unsafe = lanes
        self.done = done
        self.wal_segment = wal_segment
        # Set when a lane gave some of its events up (the first such reason),
        # with how many it dead-lettered and lost, summed over the lanes.
        self.failure: str | None = None
        self.dead_lettered = 0
        self.lost = 0


class Submission:
    """One lane's share of an offer, followed until every event was written or given up."""

    __slots__ = (
        "arrived",
        "block",
        "count",
        "dead_lettered",
        "failure",
        "lost",
        "nbytes",
        "remaining",
        "safe",
        "spill_segment",
        "ticket",
        "trace",
    )

    def __init__(
        self,
        block: EventBlock,
        nbytes: int,
        arrived: float,
        ticket: Ticket | None,
        trace: Any,
        *,
        safe: bool = False,
        spill_segment: Segment | None = None,
    ) -> None:
        self.block = block
        self.count = len(block)
        self.nbytes = nbytes
        self.remaining = self.count
        self.arrived = arrived
        self.ticket = ticket
        self.trace = trace
        # Already durable outside memory (it came back from the spill): its
        # settling does not count towards the ticket's lanes_unsafe again.
        self.safe = safe
        # The spill segment it was read from, released once it is settled.
        self.spill_segment = spill_segment
        # Set when a batch holding some of its events was given up on.
        self.failure: str | None = None
        self.dead_lettered = 0
        self.lost = 0


@dataclass(slots=True, eq=False)  # identity hash: batches sit in a set while written
class Batch:
    """What one store write takes: parts of submissions' blocks, joined without a copy."""

    events: EventBatch = field(default_factory=EventBatch)
    parts: list[tuple[Submission, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.events.count


class Batcher:
    """Queues submissions and feeds batches to the writers through `batches`."""

    def __init__(self, batch: BatchSettings) -> None:
        self._size = batch.size
        self._flush_interval = batch.flush_interval
        self._consumers = batch.worker_pool_size
        # Bounded by the writer count: a batch is cut only when a writer will take it soon.
        self.batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=batch.worker_pool_size)
        self._queue: deque[Submission] = deque()
        self._head_offset = 0
        self.queued_events = 0
        self._wakeup = asyncio.Event()
        self._handing_over: Batch | None = None
        self._closing = False

    def add(self, submission: Submission) -> None:
        was_empty = not self._queue
        self._queue.append(submission)
        self.queued_events += submission.count
        if was_empty or self.queued_events >= self._size:
            self._wakeup.set()

    def close(self) -> None:
        """Flush what is queued without waiting for the interval, then end run()."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.queued_events < self._size and not self._closing:
                delay = self._queue[0].arrived + self._flush_interval - time.monotonic()
                if delay > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                    continue
            batch = self._take(limit=self._size)
            self._handing_over = batch  # visible to leftovers() while the put waits
            await self.batches.put(batch)
            self._handing_over = None
        for _ in range(self._consumers):
            await self.batches.put(None)

    def leftovers(self) -> list[Batch]:
        """Everything not handed to a writer yet (after run() was cancelled)."""
        leftovers = []
        if self._handing_over is not None:
            leftovers.append(self._handing_over)
        while not self.batches.empty():
            batch = self.batches.get_nowait()
            if batch is not None:
                leftovers.append(batch)
        if self._queue:
            leftovers.append(self._take(limit=None))
        return leftovers

    def _take(self, limit: int | None) -> Batch:
        batch = Batch()
        events = batch.events
        queue = self._queue
        while queue and (limit is None or events.count < limit):
            head = queue[0]
            offset = self._head_offset
            available = head.count - offset
            take = available if limit is None else min(available, limit - events.count)
            events.add(head.block.slice(offset, offset + take))
            batch.parts.append((head, take))
            if take == available:
                queue.popleft()
                self._head_offset = 0
            else:
                self._head_offset += take
        self.queued_events -= events.count
        return batch
