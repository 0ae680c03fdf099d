"""What the pipeline reports while it works; aep.observability.telemetry implements it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any


class PipelineObserver:
    """The defaults do nothing, so the pipeline runs (and is tested) without telemetry.

    Calls happen per submission or per batch, never per event.
    """

    tracing = False  # when True: trace_context() at submit, write_span() per batch

    def for_store(self, store: str) -> PipelineObserver:
        """The observer for one store's lane (its reports carry the store's name)."""
        return self

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
