"""The one interface every store implements. Stores know nothing about gRPC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aep.events.block import EventBatch
from aep.settings import DatabaseSettings


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a batch write did: new events stored, and ids that were already stored."""

    written: int
    duplicates: int


class StoreError(Exception):
    """A store operation failed; the pipeline retries, then dead-letters."""


class EventStore(Protocol):
    """A place events end up. write_batch must be idempotent by event_id."""

    @property
    def name(self) -> str: ...

    async def open(self) -> None:
        """Connect / create what is needed. Raises StoreError when unreachable."""

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        """Store the batch; ids already stored are counted as duplicates.

        The batch holds the events encoded once (JSON Lines, ids, types); a store
        derives its own form from it (batch.joined, batch.lines(), batch.records()).

        Returns only once the batch is as durable as the store's policy makes
        it; raises StoreError when nothing of the batch can be counted as stored.
        """
        ...

    async def ping(self) -> None:
        """Raise StoreError when the store cannot take writes."""

    async def close(self) -> None:
        """Flush and release everything; called once, after the last write."""


class StoreBackend(Protocol):
    """A store class: builds its store, not yet opened, from the database settings."""

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, worker_count: int) -> EventStore:
        """worker_count: the batch writers that will call write_batch concurrently."""
        ...


def redact_credentials(url: str) -> str:
    """A connection URL without its password, for messages and logs."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not separator or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
