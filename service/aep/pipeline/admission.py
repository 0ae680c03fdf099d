"""The admission bound and the one refusal of the pipeline.

Every accepted event counts against queue.max_events and its request's bytes
against queue.max_bytes until its write finished (stored or dead-lettered), so
memory is bounded no matter how slow the store is. Past the bound admission
refuses at once (it never blocks the loop), with the delay after which the
events would likely fit at the current drain rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from enum import Enum

from aep.pipeline.ledger import Rejection
from aep.settings import QueueSettings

_DRAIN_RATE_WINDOW_S = 3.0
_MIN_RETRY_DELAY_S = 0.05
_MAX_RETRY_DELAY_S = 5.0


class RefusalKind(Enum):
    OVERLOAD = "overload"  # the queue bound is reached: retry after the delay
    CLOSING = "closing"  # the pipeline is draining for shutdown: retry elsewhere
    LOG_FAILURE = "log_failure"  # the write-ahead log could not be written: retry

    @property
    def rejection(self) -> Rejection:
        """The reason the ledger counts the refused events under."""
        return Rejection.OVERLOAD if self is RefusalKind.OVERLOAD else Rejection.UNAVAILABLE


class AdmissionRefusedError(Exception):
    """The pipeline did not take these events; nothing of them was accepted.

    `retry_after_s` is set for OVERLOAD: when the events would likely fit.
    """

    def __init__(self, kind: RefusalKind, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


class Admission:
    """Counts what is accepted and not yet written; refuses what would pass the bound."""

    __slots__ = (
        "_recent_writes",
        "_room",
        "closing",
        "max_bytes",
        "max_events",
        "pending_bytes",
        "pending_events",
    )

    def __init__(self, queue: QueueSettings) -> None:
        self.max_events = queue.max_events
        self.max_bytes = queue.max_bytes
        self.pending_events = 0  # accepted, not yet written (queued, batched or being written)
        self.pending_bytes = 0
        self.closing = False
        self._room = asyncio.Event()  # set whenever writes free room
        # (monotonic time, events) of recent successful writes: the drain rate.
        self._recent_writes: deque[tuple[float, int]] = deque()

    def has_room(self, count: int, nbytes: int) -> bool:
        return (
            self.pending_events + count <= self.max_events
            and self.pending_bytes + nbytes <= self.max_bytes
        )

    def check(self, count: int, nbytes: int) -> None:
        """Raise the refusal that reserve() would raise now, without taking room."""
        if self.closing:
            raise AdmissionRefusedError(RefusalKind.CLOSING, "the server is shutting down")
        if not self.has_room(count, nbytes):
            raise AdmissionRefusedError(
                RefusalKind.OVERLOAD, self._full_message(), self.retry_delay(count, nbytes)
            )

    def reserve(self, count: int, nbytes: int) -> None:
        """Take room for `count` events of `nbytes`, or raise AdmissionRefusedError."""
        events = self.pending_events + count
        total_bytes = self.pending_bytes + nbytes
        if self.closing or events > self.max_events or total_bytes > self.max_bytes:
            self.check(count, nbytes)
        self.pending_events = events
        self.pending_bytes = total_bytes

    def release(self, count: int, nbytes: int) -> None:
        """Room given back: the events were written, dead-lettered or never queued."""
        self.pending_events -= count
        self.pending_bytes -= nbytes
        self._room.set()

    def written(self, count: int) -> None:
        """`count` events were stored: the drain rate that retry delays are estimated from."""
        self._recent_writes.append((time.monotonic(), count))

    async def wait_for_room(self, count: int, nbytes: int, wait_s: float) -> bool:
        """Wait until `count` events of `nbytes` would be admitted; False on timeout."""
        if self.has_room(count, nbytes) or self.closing:
            return True
        deadline = time.monotonic() + wait_s
        while not self.has_room(count, nbytes) and not self.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
        return True

    def close(self) -> None:
        """Refuse everything from now on (the shutdown drain); wakes whoever waits for room."""
        self.closing = True
        self._room.set()

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
        over_events = self.pending_events + count - self.max_events
        over_bytes = self.pending_bytes + nbytes - self.max_bytes
        mean_size = self.pending_bytes / max(self.pending_events, 1)
        excess = max(over_events, over_bytes / max(mean_size, 1.0), 1)
        return min(_MAX_RETRY_DELAY_S, max(_MIN_RETRY_DELAY_S, excess / rate))

    def _full_message(self) -> str:
        return (
            f"queue full ({self.pending_events} events / {self.pending_bytes} bytes pending; "
            f"bounds queue.max_events={self.max_events}, "
            f"queue.max_bytes={self.max_bytes}); retry later"
        )
