"""The pipeline between the servicer and the store, and its one entry point, offer().

    offer(block, nbytes, ack) -> admission (queue.max_events, queue.max_bytes)
        [ack durable: write-ahead log append, fsynced] -> batcher (batch.size or
        batch.flush_interval) -> batch.worker_pool_size writers -> store
                                      (retry with backoff, then dead-letter)

Each job is a class of its own: Admission (the bound and the refusal),
Batcher, Sender (the writers with retry and dead-lettering), StoreHealth;
the Pipeline wires them, follows each submission until all its events are
settled, and owns start and the shutdown drain. Counting goes to the Ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aep.events.block import EventBlock
from aep.pipeline.admission import Admission, AdmissionRefusedError, RefusalKind
from aep.pipeline.batcher import Batch, Batcher, Submission
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger, Rejection
from aep.pipeline.observer import PipelineObserver
from aep.pipeline.sender import Sender
from aep.pipeline.store_health import StoreHealth, StoreState
from aep.pipeline.wal import Segment, WalError, WriteAheadLog
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import EventStore

__all__ = [
    "AckMode",
    "AdmissionRefusedError",
    "CommitFailedError",
    "Pipeline",
    "PipelineObserver",
    "RefusalKind",
    "StoreState",
]

logger = logging.getLogger(__name__)


class CommitFailedError(Exception):
    """The store refused events of a submission past the retry bound.

    `dead_lettered` of them are in the dead-letter file; `lost` could not be
    written there either (the events of the submission that were stored are the rest).
    """

    def __init__(self, reason: str, *, dead_lettered: int, lost: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dead_lettered = dead_lettered
        self.lost = lost


class Pipeline:
    def __init__(
        self,
        store: EventStore,
        ledger: Ledger,
        dead_letters: DeadLetterQueue,
        *,
        batch: BatchSettings,
        queue: QueueSettings,
        retry: RetrySettings,
        wal: WriteAheadLog | None = None,
        observer: PipelineObserver | None = None,
    ) -> None:
        self._wal = wal
        self._ledger = ledger
        self._observer = observer or PipelineObserver()
        self._tracing = self._observer.tracing
        self._worker_count = batch.worker_pool_size
        self._tasks: list[asyncio.Task[None]] = []
        self.admission = Admission(queue)
        self._batcher = Batcher(batch)
        self.store_health = StoreHealth(lambda: self.broken)
        self._sender = Sender(
            store,
            self._batcher.batches,
            retry=retry,
            admission=self.admission,
            ledger=ledger,
            health=self.store_health,
            dead_letters=dead_letters,
            observer=self._observer,
            settle=self._settle,
        )

    # -- state -----------------------------------------------------------
    @property
    def pending_events(self) -> int:
        """Accepted events not yet written (queued, batched or being written)."""
        return self.admission.pending_events

    @property
    def pending_bytes(self) -> int:
        return self.admission.pending_bytes

    @property
    def queued_events(self) -> int:
        """Accepted events not yet taken into a batch."""
        return self._batcher.queued_events

    @property
    def max_events(self) -> int:
        return self.admission.max_events

    @property
    def max_bytes(self) -> int:
        return self.admission.max_bytes

    @property
    def store_state(self) -> StoreState:
        return self.store_health.state

    @property
    def durable_acks(self) -> bool:
        """Whether offer() takes AckMode.DURABLE: there is a write-ahead log."""
        return self._wal is not None

    @property
    def broken(self) -> bool:
        """A batcher or writer task died of a bug: nothing more will be written."""
        return any(
            task.done() and not task.cancelled() and task.exception() is not None
            for task in self._tasks
        )

    # -- admission ---------------------------------------------------------
    def check(self, count: int, nbytes: int) -> None:
        """Before any per-event work: raise the refusal offer() would raise now.

        A refused request's events are counted as received and rejected.
        """
        try:
            self.admission.check(count, nbytes)
        except AdmissionRefusedError as refusal:
            self._ledger.refused_whole(count, refusal.kind.rejection)
            raise

    def offer(self, block: EventBlock, nbytes: int, ack: AckMode) -> asyncio.Future[None] | None:
        """Take the events or raise AdmissionRefusedError (counted); never blocks.

        Returns what the acknowledgement waits for: None for AckMode.ACCEPTED;
        for DURABLE a future done once the write-ahead log append is fsynced (or
        failing with AdmissionRefusedError LOG_FAILURE, the events not taken);
        for COMMITTED a future done once every event is written (or failing
        with CommitFailedError).
        """
        if ack is AckMode.DURABLE and self._wal is None:
            raise ValueError("AckMode.DURABLE needs the write-ahead log (wal.dir)")
        count = len(block)
        try:
            self.admission.reserve(count, nbytes)
        except AdmissionRefusedError as refusal:
            self._ledger.rejected(count, refusal.kind.rejection)
            raise
        if ack is AckMode.ACCEPTED:
            self._enqueue(block, nbytes, None, None)
            return None
        if ack is AckMode.COMMITTED:
            done = asyncio.get_running_loop().create_future()
            self._enqueue(block, nbytes, done, None)
            return done
        return asyncio.ensure_future(self._log_then_enqueue(block, nbytes))

    async def wait_for_room(self, count: int, nbytes: int, wait_s: float) -> bool:
        """Wait until `count` events of `nbytes` would be admitted; False on timeout."""
        return await self.admission.wait_for_room(count, nbytes, wait_s)

    def resubmit(self, block: EventBlock, nbytes: int, segment: Segment) -> None:
        """Events replayed from the write-ahead log `segment` (aep.pipeline.recovery).

        Raises AdmissionRefusedError, not counted: they stay in their segment.
        """
        self.admission.reserve(len(block), nbytes)
        self._enqueue(block, nbytes, None, segment)

    def _enqueue(
        self,
        block: EventBlock,
        nbytes: int,
        done: asyncio.Future[None] | None,
        wal_segment: Segment | None,
    ) -> None:
        trace = self._observer.trace_context() if self._tracing else None
        self._batcher.add(Submission(block, nbytes, time.monotonic(), done, wal_segment, trace))

    async def _log_then_enqueue(self, block: EventBlock, nbytes: int) -> None:
        """Durable mode: the events reach the queue once their log append is fsynced."""
        assert self._wal is not None
        try:
            segment = await self._wal.append(block)
        except BaseException as error:
            count = len(block)
            self.admission.release(count, nbytes)
            self._ledger.rejected(count, Rejection.UNAVAILABLE)
            if isinstance(error, WalError):
                raise AdmissionRefusedError(RefusalKind.LOG_FAILURE, str(error)) from error
            raise
        self._enqueue(block, nbytes, None, segment)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._batcher.run(), name="batcher"))
        for index in range(self._worker_count):
            self._tasks.append(asyncio.create_task(self._sender.run(), name=f"writer-{index}"))
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, never expected: make it loud. What the task held is
        # dead-lettered by drain() when the grace period runs out.
        logger.critical(
            "pipeline task crashed", exc_info=task.exception(), extra={"task": task.get_name()}
        )
        self.store_health.crashed(f"pipeline task {task.get_name()} crashed: {task.exception()}")

    async def drain(self, budget_s: float) -> bool:
        """Stop admission, write everything accepted, stop the tasks.

        True when all was written (or dead-lettered by the retry policy). When
        the timeout passes first, whatever is left is dead-lettered with the
        reason "shutdown", so nothing accepted vanishes silently; returns False.
        """
        self.admission.close()
        self._batcher.close()
        if not self._tasks:
            # Never started (the store never became reachable): what was
            # accepted meanwhile goes to the dead-letter file, not away.
            if not self._batcher.queued_events:
                return True
            await self._dead_letter_leftovers("the store never became reachable")
            return False
        _, unfinished = await asyncio.wait(self._tasks, timeout=budget_s)
        if not unfinished:
            return self.admission.pending_events == 0
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        await self._dead_letter_leftovers("shutdown grace period ended before the write")
        return False

    async def _dead_letter_leftovers(self, reason: str) -> None:
        leftovers = [*self._sender.writing, *self._batcher.leftovers()]
        for batch in leftovers:
            await self._sender.give_up(batch, reason, attempts=0)

    # -- settling -----------------------------------------------------------------
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
                self._settled(submission)
        self.admission.release(batch.count, freed_bytes)
        if failure is None and events:
            self._observer.submissions_written(event_seconds, events)

    def _settled(self, submission: Submission) -> None:
        """Every event of the submission is stored, dead-lettered or lost: tell its waiters."""
        done = submission.done
        if done is not None and not done.done():
            if submission.failure is None:
                done.set_result(None)
            else:
                # Once all its batches ended, so the message can say
                # truthfully where every event of it went.
                done.set_exception(
                    CommitFailedError(
                        submission.failure,
                        dead_lettered=submission.dead_lettered,
                        lost=submission.lost,
                    )
                )
        if submission.wal_segment is not None and self._wal is not None:
            if submission.lost:
                # The log holds the last copy of these acknowledged
                # events: keep their segment for the next start's replay.
                logger.critical(
                    "events kept in the write-ahead log for the next start",
                    extra={
                        "events": submission.lost,
                        "segment": str(submission.wal_segment.path),
                    },
                )
            else:
                # Stored or dead-lettered: the log no longer needs it.
                self._wal.committed(submission.wal_segment)
