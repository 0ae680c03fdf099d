"""One store's lane: its own bound, batcher, writers, health, dead-letter file and spill.

    reserve() -> queue (Admission: queue.max_events, queue.max_bytes)
              -> or, when the queue is full, the spill on disk (spill.max_bytes)
    Batcher -> batch.worker_pool_size writers (Sender: retry, then dead-letter) -> store

A store that is down or slow fills only its own lane: the other lanes take
and write the same offers at their own pace. While a lane's spill holds
events, that lane's new events go to the spill too, and a task takes the
spill back into the queue, oldest first, as fast as the queue has room,
so the store receives them in arrival order once it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import Enum

from aep.events.block import EventBatch, EventBlock
from aep.pipeline.admission import Admission, AdmissionRefusedError, RefusalKind
from aep.pipeline.batcher import Batch, Batcher, Submission, Ticket
from aep.pipeline.dead_letters import DeadLetterQueue, DeadLetterWriteError
from aep.pipeline.ledger import StoreBook
from aep.pipeline.observer import PipelineObserver
from aep.pipeline.sender import Sender
from aep.pipeline.spill import Spill, record_bytes
from aep.pipeline.store_health import StoreHealth
from aep.pipeline.wal import REPLAY_BYTES_PER_EVENT
from aep.settings import BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import EventStore

logger = logging.getLogger(__name__)

_SPILL_ROOM_WAIT_S = 0.5


class Route(Enum):
    """Where a lane puts the events of a reserved offer."""

    QUEUE = "queue"
    SPILL = "spill"


class Lane:
    def __init__(
        self,
        store: EventStore,
        book: StoreBook,
        dead_letters: DeadLetterQueue,
        *,
        batch: BatchSettings,
        queue: QueueSettings,
        retry: RetrySettings,
        observer: PipelineObserver,
        spill: Spill | None,
        ticket_safe: Callable[[Ticket], None],
        ticket_settled: Callable[[Ticket], None],
    ) -> None:
        self.store = store
        self.name = store.name
        self.book = book
        self.dead_letters = dead_letters
        self.spill = spill
        # True while the spill holds events: new ones go behind them, to the spill.
        self.spilling = False
        self.admission = Admission(queue)
        self.batcher = Batcher(batch)
        self.health = StoreHealth(lambda: self.broken)
        self._observer = observer
        self._worker_count = batch.worker_pool_size
        self._ticket_safe = ticket_safe
        self._ticket_settled = ticket_settled
        self.sender = Sender(
            store,
            self.batcher.batches,
            retry=retry,
            admission=self.admission,
            book=book,
            health=self.health,
            dead_letters=dead_letters,
            observer=observer,
            settle=self._settle,
        )
        self.tasks: list[asyncio.Task[None]] = []
        self._spill_task: asyncio.Task[None] | None = None
        self._spill_writes: set[asyncio.Task[None]] = set()

    # -- state -------------------------------------------------------------------------
    @property
    def pending_events(self) -> int:
        """Events of this lane not yet written: in memory, and in the spill."""
        spilled = self.spill.events if self.spill is not None else 0
        return self.admission.pending_events + spilled

    @property
    def spill_bytes(self) -> int:
        return self.spill.bytes if self.spill is not None else 0

    @property
    def spill_full(self) -> bool:
        """No room left for new events: the queue is full and so is the spill (or none)."""
        spill = self.spill
        if spill is None:
            return not self.admission.has_room(1, 1)
        return not spill.has_room(spill.max_bytes // 100 or 1)

    @property
    def broken(self) -> bool:
        """A batcher or writer task died of a bug: nothing more will be written."""
        return any(
            task.done() and not task.cancelled() and task.exception() is not None
            for task in self.tasks
        )

    # -- taking offers ---------------------------------------------------------------------
    def would_take(self, count: int, nbytes: int) -> bool:
        if self.admission.closing:
            return True  # reserve() refuses at once: nothing to wait for
        if not self.spilling and self.admission.has_room(count, nbytes):
            return True
        return self.spill is not None and self.spill.has_room(nbytes)

    def check(self, count: int, nbytes: int) -> None:
        """Raise the refusal reserve() would raise now (`nbytes` estimates the spill's share)."""
        if self.spill is None or self.admission.closing:
            self.admission.check(count, nbytes)
            return
        if not self.spilling and self.admission.has_room(count, nbytes):
            return
        if not self.spill.has_room(nbytes):
            raise self._spill_full(count, nbytes)

    def reserve(self, block: EventBlock, nbytes: int) -> Route:
        """Take room for the block in the queue or the spill, or raise AdmissionRefusedError."""
        count = len(block)
        spill = self.spill
        if spill is None or self.admission.closing:
            self.admission.reserve(count, nbytes)
            return Route.QUEUE
        if not self.spilling and self.admission.has_room(count, nbytes):
            self.admission.reserve(count, nbytes)
            return Route.QUEUE
        if not spill.has_room(record_bytes(block)):
            raise self._spill_full(count, nbytes)
        spill.reserve(block)
        if not self.spilling:
            self.spilling = True
            logger.warning(
                "store lane full: spilling its new events to disk",
                extra={"store": self.name, "spill": str(spill.directory)},
            )
        return Route.SPILL

    def unreserve(self, route: Route, block: EventBlock, nbytes: int) -> None:
        """Give back what reserve() took: the offer is not taken after all."""
        if route is Route.QUEUE:
            self.admission.release(len(block), nbytes)
        else:
            assert self.spill is not None
            self.spill.unreserve(block)

    def put(
        self, route: Route, block: EventBlock, nbytes: int, ticket: Ticket | None, trace: object
    ) -> None:
        """Hand over a reserved offer's events."""
        submission = Submission(block, nbytes, time.monotonic(), ticket, trace)
        if route is Route.QUEUE:
            self.batcher.add(submission)
            return
        task = asyncio.create_task(self._write_to_spill(submission), name=f"spill-{self.name}")
        self._spill_writes.add(task)
        task.add_done_callback(self._spill_writes.discard)

    def _spill_full(self, count: int, nbytes: int) -> AdmissionRefusedError:
        assert self.spill is not None
        spill = self.spill
        return AdmissionRefusedError(
            RefusalKind.OVERLOAD,
            f"store {self.name}: queue full ({self.admission.pending_events} events pending, "
            f"queue.max_events={self.admission.max_events}) and its spill full "
            f"({spill.bytes} bytes, spill.max_bytes={spill.max_bytes}); retry later",
            self.admission.retry_delay(count, nbytes),
        )

    # -- the spill ---------------------------------------------------------------------------
    async def _write_to_spill(self, submission: Submission) -> None:
        assert self.spill is not None
        block = submission.block
        try:
            await self.spill.append(block, submission.ticket)
        except Exception as error:  # WalError, or a bug: either way not in the spill
            await self._dead_letter_unspilled(submission, f"spill write failed: {error}")
            return
        self.book.events_spilled += submission.count
        submission.safe = True
        ticket = submission.ticket
        if ticket is not None:
            ticket.lanes_unsafe -= 1
            if ticket.lanes_unsafe == 0:
                self._ticket_safe(ticket)

    async def _dead_letter_unspilled(self, submission: Submission, reason: str) -> None:
        """Neither queue nor spill has the events: this store's dead-letter file gets them."""
        count = submission.count
        batch = EventBatch([submission.block])
        try:
            await self.dead_letters.append(batch, reason, 0)
        except OSError as error:
            saved = error.saved if isinstance(error, DeadLetterWriteError) else 0
            logger.critical(
                "events lost: the spill and the dead-letter file could not be written",
                extra={"store": self.name, "events": count - saved, "error": str(error)},
            )
        else:
            saved = count
            logger.error(
                "events dead-lettered: the spill could not be written",
                extra={"store": self.name, "events": count, "reason": reason},
            )
        self.book.dead_lettered(saved, count - saved)
        submission.remaining = 0
        submission.failure = reason
        submission.dead_lettered = saved
        submission.lost = count - saved
        self._submission_settled(submission)

    async def _take_back_spill(self) -> None:
        """Forever: the spill's records back into the queue, oldest first, as room allows."""
        spill = self.spill
        assert spill is not None
        admission = self.admission
        while True:
            taken = await spill.take()
            if taken is None:
                if self.spilling:
                    self.spilling = False
                    logger.info("store lane caught up with its spill", extra={"store": self.name})
                spill.nonempty.clear()
                await spill.nonempty.wait()
                continue
            entry, blocks = taken
            records = entry.records
            for block in blocks:
                ticket = None
                if records:
                    ticket, _ = records.popleft()
                count = len(block)
                nbytes = REPLAY_BYTES_PER_EVENT * count
                while not admission.has_room(count, nbytes):
                    if admission.closing:
                        # Shutdown: the rest stays in the segment (held) for the next start.
                        return
                    await admission.wait_for_room(count, nbytes, _SPILL_ROOM_WAIT_S)
                admission.reserve(count, nbytes)
                spill.taken(count)
                self.batcher.add(
                    Submission(
                        block,
                        nbytes,
                        time.monotonic(),
                        ticket,
                        None,
                        safe=True,
                        spill_segment=entry.segment,
                    )
                )
            while records:
                # Appended but not read back (damage on disk): those events are lost here.
                ticket, count = records.popleft()
                spill.lost(count)
                self.book.dead_lettered(0, count)
                logger.critical(
                    "events lost: a spill record could not be read back",
                    extra={"store": self.name, "events": count, "segment": str(entry.segment.path)},
                )
                if ticket is not None:
                    ticket.failure = ticket.failure or "the spill record could not be read back"
                    ticket.lost += count
                    self._lane_done(ticket, safe=True)
            spill.release(entry)

    # -- lifecycle -----------------------------------------------------------------------------
    async def open_spill(self) -> int:
        """Open the spill (OSError if it cannot be); the events an earlier run left in it."""
        if self.spill is None:
            return 0
        events = await asyncio.to_thread(self.spill.open)
        if events:
            self.spilling = True
            self.book.events_spill_recovered += events
            logger.warning(
                "store lane: an earlier run left events in its spill; writing them first",
                extra={"store": self.name, "events": events},
            )
        return events

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.batcher.run(), name=f"batcher-{self.name}"))
        for index in range(self._worker_count):
            self.tasks.append(
                asyncio.create_task(self.sender.run(), name=f"writer-{self.name}-{index}")
            )
        if self.spill is not None:
            self.spill.start()
            self._spill_task = asyncio.create_task(
                self._take_back_spill(), name=f"spill-reader-{self.name}"
            )
            self.tasks.append(self._spill_task)

    async def stop_spill(self) -> None:
        """Shutdown: finish the spill appends in flight; stop taking the spill back.

        What was not stored stays in the spill for the next start.
        """
        if self._spill_writes:
            await asyncio.gather(*self._spill_writes, return_exceptions=True)
        if self._spill_task is not None:
            self._spill_task.cancel()
            await asyncio.gather(self._spill_task, return_exceptions=True)
            self.tasks.remove(self._spill_task)
            self._spill_task = None

    async def close_spill(self) -> None:
        if self.spill is not None:
            await self.spill.close()

    # -- settling ----------------------------------------------------------------------------
    def _settle(self, batch: Batch, failure: str | None, dead_lettered: int) -> None:
        """The batch is stored (failure None), or given up on: its first
        `dead_lettered` events are in the dead-letter file, the rest lost."""
        now = time.monotonic()
        event_seconds = 0.0
        events = 0
        freed_bytes = 0
        for submission, count in batch.parts:
            submission.remaining -= count
            if failure is not None:
                saved = min(count, dead_lettered)
                dead_lettered -= saved
                submission.failure = failure
                submission.dead_lettered += saved
                submission.lost += count - saved
            if submission.remaining == 0:
                freed_bytes += submission.nbytes
                size = submission.count
                event_seconds += (now - submission.arrived) * size
                events += size
                self._submission_settled(submission)
        self.admission.release(batch.count, freed_bytes)
        if failure is None and events:
            self._observer.submissions_written(event_seconds, events)

    def _submission_settled(self, submission: Submission) -> None:
        """This lane is done with the submission's events: tell its spill and its ticket."""
        if submission.spill_segment is not None:
            assert self.spill is not None
            self.spill.stored(submission.spill_segment)
        ticket = submission.ticket
        if ticket is None:
            return
        if submission.failure is not None:
            ticket.failure = ticket.failure or f"store {self.name}: {submission.failure}"
            ticket.dead_lettered += submission.dead_lettered
            ticket.lost += submission.lost
        self._lane_done(ticket, safe=submission.safe)

    def _lane_done(self, ticket: Ticket, *, safe: bool) -> None:
        if not safe:
            ticket.lanes_unsafe -= 1
            if ticket.lanes_unsafe == 0:
                self._ticket_safe(ticket)
        ticket.lanes_unsettled -= 1
        if ticket.lanes_unsettled == 0:
            self._ticket_settled(ticket)
