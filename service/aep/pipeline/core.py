"""The pipeline between the servicer and the stores, and its one entry point, offer().

    offer(block, nbytes, ack) -> every store's lane takes it, or none does:
        [ack durable: write-ahead log append, fsynced] ->
        one lane per store (aep.pipeline.lane): admission (queue.max_events,
        queue.max_bytes) or, when full, that store's spill on disk -> batcher
        (batch.size or batch.flush_interval) -> batch.worker_pool_size writers
        -> store (retry with backoff, then that store's dead-letter file)

Each job is a class of its own: Admission (the bound and the refusal),
Batcher, Sender (the writers with retry and dead-lettering), StoreHealth,
Spill; a Lane wires them for one store. The Pipeline offers each request to
every lane, follows it with a Ticket until every lane settled it, and owns
start and the shutdown drain. Counting goes to the Ledger, per store.

What an acknowledgement means with several stores:
- accepted: every lane took the events (in memory, or the spill's append is
  under way); a crash can lose what is in memory.
- durable: the write-ahead log holds them (fsynced); the log keeps them until
  every lane stored them, dead-lettered them or has them in its spill on disk.
- committed: every listed store wrote them (or the call fails naming what
  was dead-lettered or lost); a store that is down holds the call until its
  spill is written, or until the caller's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aep.events.block import EventBlock
from aep.pipeline.admission import AdmissionRefusedError, RefusalKind
from aep.pipeline.batcher import Ticket
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.lane import Lane, Route
from aep.pipeline.ledger import Ledger, Rejection
from aep.pipeline.observer import PipelineObserver
from aep.pipeline.spill import Spill
from aep.pipeline.store_health import StoreState
from aep.pipeline.wal import Segment, WalError, WriteAheadLog
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings
from aep.storage.base import EventStore

__all__ = [
    "AckMode",
    "AdmissionRefusedError",
    "CommitFailedError",
    "Outlet",
    "Pipeline",
    "PipelineObserver",
    "RefusalKind",
    "StoreState",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outlet:
    """A store and what its lane needs besides: its dead-letter file, its spill (or none)."""

    store: EventStore
    dead_letters: DeadLetterQueue
    spill: Spill | None = None


class CommitFailedError(Exception):
    """A store refused events of a submission past the retry bound.

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
        outlets: Sequence[Outlet],
        ledger: Ledger,
        *,
        batch: BatchSettings,
        queue: QueueSettings,
        retry: RetrySettings,
        wal: WriteAheadLog | None = None,
        observer: PipelineObserver | None = None,
    ) -> None:
        if not outlets:
            raise ValueError("a pipeline needs at least one store")
        self._wal = wal
        self._ledger = ledger
        self._observer = observer or PipelineObserver()
        self._tracing = self._observer.tracing
        self._started = False
        self.lanes = [
            Lane(
                outlet.store,
                ledger.book(outlet.store.name),
                outlet.dead_letters,
                batch=batch,
                queue=queue,
                retry=retry,
                observer=self._observer.for_store(outlet.store.name),
                spill=outlet.spill,
                ticket_safe=self._ticket_safe,
                ticket_settled=self._ticket_settled,
            )
            for outlet in outlets
        ]
        # With one store, the pipeline's bound and health are its lane's.
        first = self.lanes[0]
        self.admission = first.admission
        self.store_health = first.health

    # -- state -----------------------------------------------------------
    @property
    def pending_events(self) -> int:
        """Accepted events not yet written to every store (queued, being written, spilled).

        With several stores: the most any lane holds (they hold the same events).
        """
        return max(lane.pending_events for lane in self.lanes)

    @property
    def pending_bytes(self) -> int:
        return max(lane.admission.pending_bytes for lane in self.lanes)

    @property
    def memory_pending_events(self) -> int:
        """Accepted events held in memory by the fullest lane (not counting spills)."""
        return max(lane.admission.pending_events for lane in self.lanes)

    @property
    def queued_events(self) -> int:
        """Accepted events not yet taken into a batch (the fullest lane's)."""
        return max(lane.batcher.queued_events for lane in self.lanes)

    @property
    def max_events(self) -> int:
        return self.admission.max_events

    @property
    def max_bytes(self) -> int:
        return self.admission.max_bytes

    @property
    def store_state(self) -> StoreState:
        """The first store's state (the only one's, with one store)."""
        return self.store_health.state

    @property
    def durable_acks(self) -> bool:
        """Whether offer() takes AckMode.DURABLE: there is a write-ahead log."""
        return self._wal is not None

    @property
    def broken(self) -> bool:
        """A batcher or writer task died of a bug: nothing more will be written."""
        return any(lane.broken for lane in self.lanes)

    # -- admission ---------------------------------------------------------
    def check(self, count: int, nbytes: int) -> None:
        """Before any per-event work: raise the refusal offer() would raise now.

        A refused request's events are counted as received and rejected.
        """
        try:
            for lane in self.lanes:
                lane.check(count, nbytes)
        except AdmissionRefusedError as refusal:
            self._ledger.refused_whole(count, refusal.kind.rejection)
            raise

    def offer(self, block: EventBlock, nbytes: int, ack: AckMode) -> asyncio.Future[None] | None:
        """Take the events into every lane or raise AdmissionRefusedError (counted); never blocks.

        Returns what the acknowledgement waits for: None for AckMode.ACCEPTED;
        for DURABLE a future done once the write-ahead log append is fsynced (or
        failing with AdmissionRefusedError LOG_FAILURE, the events not taken);
        for COMMITTED a future done once every store wrote every event (or
        failing with CommitFailedError).
        """
        if ack is AckMode.DURABLE and self._wal is None:
            raise ValueError("AckMode.DURABLE needs the write-ahead log (wal.dir)")
        try:
            routes = self._reserve(block, nbytes)
        except AdmissionRefusedError as refusal:
            self._ledger.rejected(len(block), refusal.kind.rejection)
            raise
        if ack is AckMode.ACCEPTED:
            self._put(routes, block, nbytes, None)
            return None
        if ack is AckMode.COMMITTED:
            done = asyncio.get_running_loop().create_future()
            self._put(routes, block, nbytes, Ticket(len(block), len(self.lanes), done, None))
            return done
        return asyncio.ensure_future(self._log_then_put(routes, block, nbytes))

    async def wait_for_room(self, count: int, nbytes: int, wait_s: float) -> bool:
        """Wait until `count` events of `nbytes` would be taken by every lane; False on timeout."""
        deadline = time.monotonic() + wait_s
        while True:
            waiting = [lane for lane in self.lanes if not lane.would_take(count, nbytes)]
            if not waiting:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            lane = waiting[0]
            if lane.spill is None:
                if not await lane.admission.wait_for_room(count, nbytes, remaining):
                    return False
            else:
                # Spill room comes back as segments are stored.
                await asyncio.sleep(min(remaining, 0.05))

    def resubmit(self, block: EventBlock, nbytes: int, segment: Segment) -> None:
        """Events replayed from the write-ahead log `segment` (aep.pipeline.recovery).

        Raises AdmissionRefusedError, not counted: they stay in their segment.
        """
        routes = self._reserve(block, nbytes)
        self._put(routes, block, nbytes, Ticket(len(block), len(self.lanes), None, segment))

    def _reserve(self, block: EventBlock, nbytes: int) -> list[Route]:
        """Room in every lane, or none taken and AdmissionRefusedError."""
        routes: list[Route] = []
        try:
            for lane in self.lanes:
                routes.append(lane.reserve(block, nbytes))
        except AdmissionRefusedError:
            for lane, route in zip(self.lanes, routes, strict=False):
                lane.unreserve(route, block, nbytes)
            raise
        return routes

    def _put(
        self, routes: list[Route], block: EventBlock, nbytes: int, ticket: Ticket | None
    ) -> None:
        trace = self._observer.trace_context() if self._tracing else None
        for lane, route in zip(self.lanes, routes, strict=True):
            lane.put(route, block, nbytes, ticket, trace)

    async def _log_then_put(self, routes: list[Route], block: EventBlock, nbytes: int) -> None:
        """Durable mode: the events reach the lanes once their log append is fsynced."""
        assert self._wal is not None
        try:
            segment = await self._wal.append(block)
        except BaseException as error:
            for lane, route in zip(self.lanes, routes, strict=True):
                lane.unreserve(route, block, nbytes)
            self._ledger.rejected(len(block), Rejection.UNAVAILABLE)
            if isinstance(error, WalError):
                raise AdmissionRefusedError(RefusalKind.LOG_FAILURE, str(error)) from error
            raise
        self._put(routes, block, nbytes, Ticket(len(block), len(self.lanes), None, segment))

    # -- lifecycle -----------------------------------------------------------
    async def open_spills(self) -> None:
        """Open every lane's spill (raises OSError); what earlier runs left goes first."""
        for lane in self.lanes:
            await lane.open_spill()

    def start(self) -> None:
        self._started = True
        for lane in self.lanes:
            lane.start()
            for task in lane.tasks:
                task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, never expected: make it loud. What the task held is
        # dead-lettered by drain() when the grace period runs out.
        logger.critical(
            "pipeline task crashed", exc_info=task.exception(), extra={"task": task.get_name()}
        )
        for lane in self.lanes:
            if task in lane.tasks:
                lane.health.crashed(f"pipeline task {task.get_name()} crashed: {task.exception()}")

    async def drain(self, budget_s: float) -> bool:
        """Stop admission, write everything accepted, stop the tasks.

        True when all was written (or dead-lettered by the retry policy). When
        the timeout passes first, whatever is left in memory is dead-lettered
        with the reason "shutdown", so nothing accepted vanishes silently;
        returns False. What a spill holds stays there for the next start (False too).
        """
        deadline = time.monotonic() + budget_s
        for lane in self.lanes:
            lane.admission.close()
        for lane in self.lanes:
            await lane.stop_spill()
            lane.batcher.close()
        if not self._started:
            # Never started (the store never became reachable): what was
            # accepted meanwhile goes to the dead-letter file, not away.
            drained = True
            for lane in self.lanes:
                if lane.batcher.queued_events:
                    await self._dead_letter_leftovers(lane, "the store never became reachable")
                    drained = False
            await self._close_spills()
            return drained
        tasks = [task for lane in self.lanes for task in lane.tasks]
        _, unfinished = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        drained = True
        if unfinished:
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            for lane in self.lanes:
                await self._dead_letter_leftovers(
                    lane, "shutdown grace period ended before the write"
                )
            drained = False
        await self._close_spills()
        return drained and all(lane.pending_events == 0 for lane in self.lanes)

    async def _close_spills(self) -> None:
        for lane in self.lanes:
            if lane.spill is not None and lane.spill.events:
                logger.warning(
                    "events kept in the spill for the next start",
                    extra={"store": lane.name, "events": lane.spill.events},
                )
            await lane.close_spill()

    async def _dead_letter_leftovers(self, lane: Lane, reason: str) -> None:
        leftovers = [*lane.sender.writing, *lane.batcher.leftovers()]
        for batch in leftovers:
            await lane.sender.give_up(batch, reason, attempts=0)

    # -- settling -----------------------------------------------------------------
    def _ticket_safe(self, ticket: Ticket) -> None:
        """Every lane holds the offer's events outside memory: the log may let go of them."""
        segment = ticket.wal_segment
        if segment is None or self._wal is None:
            return
        if ticket.lost:
            # The log holds the last copy of these acknowledged events: keep
            # their segment for the next start's replay.
            logger.critical(
                "events kept in the write-ahead log for the next start",
                extra={"events": ticket.lost, "segment": str(segment.path)},
            )
        else:
            # Stored, dead-lettered or spilled: the log no longer needs it.
            self._wal.committed(segment)

    def _ticket_settled(self, ticket: Ticket) -> None:
        """Every lane stored, dead-lettered or lost the offer's events: tell its waiter."""
        done = ticket.done
        if done is None or done.done():
            return
        if ticket.failure is None:
            done.set_result(None)
        else:
            # Once all its batches ended, so the message can say
            # truthfully where every event of it went.
            done.set_exception(
                CommitFailedError(
                    ticket.failure, dead_lettered=ticket.dead_lettered, lost=ticket.lost
                )
            )
