"""The writers: each takes a batch, writes it with retries, and past the bound dead-letters it.

batch.worker_pool_size writers run at once. A failed write is retried after
an exponential backoff with jitter (retry.*); after retry.max_attempts the
batch goes to the dead-letter file with the reason, and what even that file
could not take is counted as lost. Either way the batch is settled: its
room given back and its submissions told.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aep.pipeline.admission import Admission
from aep.pipeline.backoff import backoff_delay
from aep.pipeline.batcher import Batch
from aep.pipeline.dead_letters import DeadLetterQueue, DeadLetterWriteError
from aep.pipeline.ledger import StoreBook
from aep.pipeline.observer import PipelineObserver
from aep.pipeline.store_health import StoreHealth
from aep.settings import RetrySettings
from aep.storage.base import EventStore

logger = logging.getLogger(__name__)

# (batch, failure reason or None when stored, how many of its first events were dead-lettered)
Settle = Callable[[Batch, str | None, int], None]


class Sender:
    def __init__(
        self,
        store: EventStore,
        batches: asyncio.Queue[Batch | None],
        *,
        retry: RetrySettings,
        admission: Admission,
        book: StoreBook,
        health: StoreHealth,
        dead_letters: DeadLetterQueue,
        observer: PipelineObserver,
        settle: Settle,
    ) -> None:
        self._store = store
        self._batches = batches
        self._retry = retry
        self._admission = admission
        self._book = book
        self._health = health
        self._dead_letters = dead_letters
        self._observer = observer
        self._tracing = observer.tracing
        self._settle = settle
        # Batches being written; one stays here when its writer is cancelled
        # mid-write, so that the shutdown drain can dead-letter it.
        self.writing: set[Batch] = set()

    async def run(self) -> None:
        """One writer: until the batcher sends None."""
        while (batch := await self._batches.get()) is not None:
            self.writing.add(batch)
            if self._tracing:
                contexts = (submission.trace for submission, _ in batch.parts)
                with self._observer.write_span(contexts, batch.count):
                    await self._write_with_retry(batch)
            else:
                await self._write_with_retry(batch)
            self.writing.discard(batch)

    async def _write_with_retry(self, batch: Batch) -> None:
        retry = self._retry
        observer = self._observer
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                result = await self._store.write_batch(batch.events)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure is retried, then dead-lettered
                observer.write_attempt(time.perf_counter() - started, error)
                self._book.write_failed()
                self._health.failed(error)
                if attempt >= retry.max_attempts:
                    await self.give_up(batch, f"{type(error).__name__}: {error}", attempt)
                    return
                await asyncio.sleep(
                    backoff_delay(attempt, retry.initial_backoff, retry.max_backoff)
                )
                continue
            count = batch.count
            observer.write_attempt(time.perf_counter() - started, None)
            observer.batch_written(count, time.monotonic() - batch.parts[0][0].arrived)
            self._health.succeeded()
            self._health.state.last_write_at = time.monotonic()
            self._admission.written(count)
            self._book.stored(result.written, result.duplicates)
            self._settle(batch, None, 0)
            return

    async def give_up(self, batch: Batch, reason: str, attempts: int) -> None:
        """Dead-letter the batch with the reason; what the file cannot take is lost."""
        count = batch.count
        try:
            await self._dead_letters.append(batch.events, reason, attempts)
        except OSError as error:
            # The lines that made it are the first `saved` events, in order.
            saved = error.saved if isinstance(error, DeadLetterWriteError) else 0
            logger.critical(
                "events lost: store write failed and the dead-letter file could not be written",
                extra={
                    "events": count - saved,
                    "dead_lettered": saved,
                    "reason": reason,
                    "error": str(error),
                    "path": str(self._dead_letters.path),
                    "store": self._store.name,
                },
            )
        else:
            saved = count
            logger.error(
                "batch dead-lettered",
                extra={
                    "events": count,
                    "reason": reason,
                    "attempts": attempts,
                    "path": str(self._dead_letters.path),
                    "store": self._store.name,
                },
            )
        self._book.dead_lettered(saved, count - saved)
        self._settle(batch, reason, saved)
