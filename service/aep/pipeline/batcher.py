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

from aep.events.schema import EventRecord
from aep.pipeline.wal import Segment
from aep.settings import BatchSettings


class Submission:
    """The events of one offer, followed until every one of them was written or given up."""

    __slots__ = (
        "arrived",
        "dead_lettered",
        "done",
        "failure",
        "lost",
        "nbytes",
        "records",
        "remaining",
        "trace",
        "wal_segment",
    )

    def __init__(
        self,
        records: list[EventRecord],
        nbytes: int,
        arrived: float,
        done: asyncio.Future[None] | None,
        wal_segment: Segment | None,
        trace: Any,
    ) -> None:
        self.records = records
        self.nbytes = nbytes
        self.remaining = len(records)
        self.arrived = arrived
        self.done = done
        self.wal_segment = wal_segment
        self.trace = trace
        # Set when a batch holding some of its events was given up on.
        self.failure: str | None = None
        self.dead_lettered = 0
        self.lost = 0


@dataclass(slots=True, eq=False)  # identity hash: batches sit in a set while written
class Batch:
    records: list[EventRecord] = field(default_factory=list)
    parts: list[tuple[Submission, int]] = field(default_factory=list)


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
        self.queued_events += len(submission.records)
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
        queue = self._queue
        while queue and (limit is None or len(batch.records) < limit):
            head = queue[0]
            available = len(head.records) - self._head_offset
            take = available if limit is None else min(available, limit - len(batch.records))
            if self._head_offset == 0 and take == len(head.records):
                batch.records.extend(head.records)
            else:
                batch.records.extend(head.records[self._head_offset : self._head_offset + take])
            batch.parts.append((head, take))
            if take == available:
                queue.popleft()
                self._head_offset = 0
            else:
                self._head_offset += take
        self.queued_events -= len(batch.records)
        return batch
