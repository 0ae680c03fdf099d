"""Admission, batching and the writers between the servicer and the store.

    submit() -> bounded queue (events and bytes) -> batcher (batch.size or
    batch.flush_interval) -> batch.worker_pool_size writers -> store
                                          (retry with backoff, then dead-letter)

The queue bound covers every accepted event until its write finished, so
memory is bounded by queue.max_events / queue.max_bytes no matter how slow the
store is; past the bound submit() refuses at once (never blocks the loop).
A submission can ask for a future that resolves when all its events are
written (ack mode `committed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from aep.events.schema import EventRecord
from aep.pipeline.backoff import backoff_delay
from aep.pipeline.dead_letters import DeadLetterQueue, DeadLetterWriteError
from aep.pipeline.ledger import IngestStats
from aep.pipeline.wal import Segment, WriteAheadLog
from aep.settings import BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import EventStore

logger = logging.getLogger(__name__)

_DRAIN_RATE_WINDOW_S = 3.0
_MIN_RETRY_DELAY_S = 0.05
_MAX_RETRY_DELAY_S = 5.0


class AdmissionError(Exception):
    """The pipeline cannot take these events now; nothing of them was accepted."""


class QueueFullError(AdmissionError):
    pass


class PipelineClosedError(AdmissionError):
    pass


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


class PipelineObserver:
    """What the pipeline reports while it works; aep.observability.telemetry implements it.

    The defaults do nothing, so the pipeline runs (and is tested) without
    telemetry. Calls happen per submission or per batch, never per event.
    """

    tracing = False  # when True: trace_context() at submit, write_span() per batch

    def trace_context(self) -> Any:
        """The caller's trace context, kept with its events for the batch span's links."""
        return None

    def write_span(self, contexts: Iterator[Any], events: int) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def write_attempt(self, seconds: float, error: Exception | None) -> None:
        """One store.write_batch call ended (error is None when it succeeded)."""

    def batch_written(self, events: int, oldest_s: float) -> None:
        """A batch of `events` is stored, `oldest_s` after its oldest event was admitted."""

    def submissions_written(self, event_seconds: float, events: int) -> None:
        """Submissions of `events` in all were stored by one batch write.

        `event_seconds`: the sum over their events of the time from admission to
        the write (a submission of n events waiting s seconds adds n * s).
        """


class _Submission:
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
class _Batch:
    records: list[EventRecord] = field(default_factory=list)
    parts: list[tuple[_Submission, int]] = field(default_factory=list)


@dataclass(slots=True)
class StoreState:
    """Outcome of the latest store call (a batch write, or a ping by the monitor)."""

    healthy: bool = True
    detail: str = "ok"
    # The failure came from a write: a ping that succeeds (the file store's only
    # checks the directory) does not clear it, only a successful write does.
    write_failed: bool = False
    failing_since: float | None = None  # time.monotonic() of the first failure in a row
    last_write_at: float | None = None  # time.monotonic() of the latest successful write


class Pipeline:
    def __init__(
        self,
        store: EventStore,
        stats: IngestStats,
        dead_letters: DeadLetterQueue,
        *,
        batch: BatchSettings,
        queue: QueueSettings,
        retry: RetrySettings,
        wal: WriteAheadLog | None = None,
        observer: PipelineObserver | None = None,
    ) -> None:
        self._store = store
        self._wal = wal
        self._stats = stats
        self._dead_letters = dead_letters
        self._batch_size = batch.size
        self._flush_interval = batch.flush_interval
        self._worker_count = batch.worker_pool_size
        self._max_events = queue.max_events
        self._max_bytes = queue.max_bytes
        self._retry = retry
        self._queue: deque[_Submission] = deque()
        self._head_offset = 0
        self._queued_events = 0
        self._pending_events = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()  # set whenever writes free queue room
        self._batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=batch.worker_pool_size)
        self._writing: set[_Batch] = set()
        self._handing_over: _Batch | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._observer = observer or PipelineObserver()
        self._tracing = self._observer.tracing
        self.store_state = StoreState()
        # (monotonic time, events) of recent successful writes: the drain rate.
        self._recent_writes: deque[tuple[float, int]] = deque()

    # -- state -----------------------------------------------------------
    @property
    def pending_events(self) -> int:
        """Accepted events not yet written (queued, batched or being written)."""
        return self._pending_events

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def queued_events(self) -> int:
        """Accepted events not yet taken into a batch."""
        return self._queued_events

    def drain_rate(self) -> float:
        """Events written per second over the last few seconds (0 when idle)."""
        horizon = time.monotonic() - _DRAIN_RATE_WINDOW_S
        recent = self._recent_writes
        while recent and recent[0][0] < horizon:
            recent.popleft()
        return sum(count for _, count in recent) / _DRAIN_RATE_WINDOW_S

    def retry_delay(self, count: int, nbytes: int) -> float:
        """Seconds until `count` events of `nbytes` would likely fit, at the drain rate."""
        rate = self.drain_rate()
        if rate <= 0:
            return _MAX_RETRY_DELAY_S  # nothing drains: the store may be down
        over_events = self._pending_events + count - self._max_events
        over_bytes = self._pending_bytes + nbytes - self._max_bytes
        mean_size = self._pending_bytes / max(self._pending_events, 1)
        excess = max(over_events, over_bytes / max(mean_size, 1.0), 1)
        return min(_MAX_RETRY_DELAY_S, max(_MIN_RETRY_DELAY_S, excess / rate))

    @property
    def max_events(self) -> int:
        return self._max_events

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def broken(self) -> bool:
        """A batcher or writer task died of a bug: nothing more will be written."""
        return any(
            task.done() and not task.cancelled() and task.exception() is not None
            for task in self._tasks
        )

    # -- admission ---------------------------------------------------------
    def has_room(self, count: int, nbytes: int) -> bool:
        return (
            self._pending_events + count <= self._max_events
            and self._pending_bytes + nbytes <= self._max_bytes
        )

    async def wait_for_room(self, count: int, nbytes: int, wait_s: float) -> bool:
        """Wait until `count` events of `nbytes` would be admitted; False on timeout."""
        deadline = time.monotonic() + wait_s
        while not self.has_room(count, nbytes) and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
        return True

    def full_message(self) -> str:
        return (
            f"queue full ({self._pending_events} events / {self._pending_bytes} bytes pending; "
            f"bounds queue.max_events={self._max_events}, "
            f"queue.max_bytes={self._max_bytes}); retry later"
        )

    def reserve(self, count: int, nbytes: int) -> None:
        """Hold room for events that will be submitted later (after a WAL append).

        Raises AdmissionError like submit(); release() gives the room back if
        the submission does not happen.
        """
        if self._closing:
            raise PipelineClosedError("the server is shutting down")
        if not self.has_room(count, nbytes):
            raise QueueFullError(self.full_message())
        self._pending_events += count
        self._pending_bytes += nbytes

    def release(self, count: int, nbytes: int) -> None:
        self._pending_events -= count
        self._pending_bytes -= nbytes
        self._room.set()

    def submit(
        self,
        records: list[EventRecord],
        nbytes: int,
        *,
        wait_for_commit: bool = False,
        reserved: bool = False,
        wal_segment: Segment | None = None,
    ) -> asyncio.Future[None] | None:
        """Take the events or raise AdmissionError; never blocks.

        With wait_for_commit, returns a future that resolves once every event is
        written (or raises CommitFailedError). `reserved`: room was taken by
        reserve(). `wal_segment`: the write-ahead log segment holding these
        events, told when they are all written.
        """
        if not reserved:
            self.reserve(len(records), nbytes)
        done = asyncio.get_running_loop().create_future() if wait_for_commit else None
        was_empty = not self._queue
        trace = self._observer.trace_context() if self._tracing else None
        self._queue.append(_Submission(records, nbytes, time.monotonic(), done, wal_segment, trace))
        self._queued_events += len(records)
        if was_empty or self._queued_events >= self._batch_size:
            self._wakeup.set()
        return done

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run_batcher(), name="batcher"))
        for index in range(self._worker_count):
            self._tasks.append(asyncio.create_task(self._run_writer(), name=f"writer-{index}"))
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
        self.store_state.healthy = False
        self.store_state.detail = f"pipeline task {task.get_name()} crashed: {task.exception()}"

    async def drain(self, budget_s: float) -> bool:
        """Stop admission, write everything accepted, stop the tasks.

        True when all was written (or dead-lettered by the retry policy). When
        the timeout passes first, whatever is left is dead-lettered with the
        reason "shutdown", so nothing accepted vanishes silently; returns False.
        """
        self._closing = True
        self._wakeup.set()
        if not self._tasks:
            # Never started (the store never became reachable): what was
            # accepted meanwhile goes to the dead-letter file, not away.
            if not self._queue:
                return True
            await self._dead_letter_leftovers("the store never became reachable")
            return False
        _, unfinished = await asyncio.wait(self._tasks, timeout=budget_s)
        if not unfinished:
            return self._pending_events == 0
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        await self._dead_letter_leftovers("shutdown grace period ended before the write")
        return False

    async def _dead_letter_leftovers(self, reason: str) -> None:
        leftovers = list(self._writing)
        if self._handing_over is not None:
            leftovers.append(self._handing_over)
        while not self._batches.empty():
            batch = self._batches.get_nowait()
            if batch is not None:
                leftovers.append(batch)
        if self._queue:
            leftovers.append(self._take_batch(limit=None))
        for batch in leftovers:
            await self._give_up(batch, reason, attempts=0)

    # -- batcher ---------------------------------------------------------------
    async def _run_batcher(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queued_events < self._batch_size and not self._closing:
                delay = self._queue[0].arrived + self._flush_interval - time.monotonic()
                if delay > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                    continue
            batch = self._take_batch(limit=self._batch_size)
            self._handing_over = batch  # visible to drain() while the put waits
            await self._batches.put(batch)
            self._handing_over = None
        for _ in range(self._worker_count):
            await self._batches.put(None)

    def _take_batch(self, limit: int | None) -> _Batch:
        batch = _Batch()
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
        self._queued_events -= len(batch.records)
        return batch

    # -- writers -----------------------------------------------------------------
    async def _run_writer(self) -> None:
        while (batch := await self._batches.get()) is not None:
            # Stays in _writing if the task is cancelled mid-write, so that
            # drain() can dead-letter it.
            self._writing.add(batch)
            if self._tracing:
                contexts = (submission.trace for submission, _ in batch.parts)
                with self._observer.write_span(contexts, len(batch.records)):
                    await self._write_with_retry(batch)
            else:
                await self._write_with_retry(batch)
            self._writing.discard(batch)

    async def _write_with_retry(self, batch: _Batch) -> None:
        retry = self._retry
        observer = self._observer
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                result = await self._store.write_batch(batch.records)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure is retried, then dead-lettered
                observer.write_attempt(time.perf_counter() - started, error)
                self._stats.write_failures += 1
                self.note_store_failure(error)
                if attempt >= retry.max_attempts:
                    await self._give_up(batch, f"{type(error).__name__}: {error}", attempt)
                    return
                await asyncio.sleep(
                    backoff_delay(attempt, retry.initial_backoff, retry.max_backoff)
                )
                continue
            observer.write_attempt(time.perf_counter() - started, None)
            observer.batch_written(len(batch.records), time.monotonic() - batch.parts[0][0].arrived)
            self.note_store_success()
            self.store_state.last_write_at = time.monotonic()
            self._recent_writes.append((time.monotonic(), len(batch.records)))
            stats = self._stats
            stats.written += result.written
            stats.duplicates += result.duplicates
            stats.batches_written += 1
            self._complete(batch, None)
            return

    async def _give_up(self, batch: _Batch, reason: str, attempts: int) -> None:
        count = len(batch.records)
        try:
            await self._dead_letters.append(batch.records, reason, attempts)
        except OSError as error:
            # The lines that made it are the first `saved` records, in order.
            saved = error.saved if isinstance(error, DeadLetterWriteError) else 0
            self._stats.dead_lettered += saved
            self._stats.lost += count - saved
            logger.critical(
                "events lost: store write failed and the dead-letter file could not be written",
                extra={
                    "events": count - saved,
                    "dead_lettered": saved,
                    "reason": reason,
                    "error": str(error),
                    "path": str(self._dead_letters.path),
                },
            )
        else:
            saved = count
            self._stats.dead_lettered += count
            logger.error(
                "batch dead-lettered",
                extra={
                    "events": count,
                    "reason": reason,
                    "attempts": attempts,
                    "path": str(self._dead_letters.path),
                },
            )
        self._complete(batch, reason, dead_lettered=saved)

    def _complete(self, batch: _Batch, failure: str | None, dead_lettered: int = 0) -> None:
        """The batch is stored (failure None), or given up on: its first
        `dead_lettered` records are in the dead-letter file, the rest lost."""
        self._room.set()
        self._pending_events -= len(batch.records)
        now = time.monotonic()
        event_seconds = 0.0
        events = 0
        for submission, count in batch.parts:
            submission.remaining -= count
            if failure is not None:
                saved = min(count, dead_lettered)
                dead_lettered -= saved
                submission.failure = failure
                submission.dead_lettered += saved
                submission.lost += count - saved
            if submission.remaining == 0:
                self._pending_bytes -= submission.nbytes
                size = len(submission.records)
                event_seconds += (now - submission.arrived) * size
                events += size
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
        if failure is None and events:
            self._observer.submissions_written(event_seconds, events)

    def note_store_failure(self, error: Exception, *, ping: bool = False) -> None:
        """A write (or, with ping, the monitor's ping) failed."""
        state = self.store_state
        if state.healthy:
            logger.warning("store failing", extra={"error": str(error)})
            state.failing_since = time.monotonic()
        state.healthy = False
        state.write_failed = state.write_failed or not ping
        state.detail = f"{type(error).__name__}: {error}"

    def note_store_success(self, *, ping: bool = False) -> None:
        """A write (or, with ping, the monitor's ping) succeeded.

        A ping clears only failures of pings: after a failed write, the store
        counts as failing until a write succeeds (a full disk passes a ping).
        """
        state = self.store_state
        if self.broken:
            return  # keep the crash in store_detail: the pipeline writes nothing more
        if ping and state.write_failed:
            return
        if not state.healthy:
            logger.info("store writes succeed again")
        state.healthy = True
        state.write_failed = False
        state.detail = "ok"
        state.failing_since = None
