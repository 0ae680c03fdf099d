"""The books of the conservation identity: every counter, written here only.

Every event received ends in exactly one of these, so at any moment

    received + replayed = rejected (invalid, overload, unavailable)
                          + written + duplicates + dead_lettered + lost + pending

(`pending` is the pipeline's count of accepted events not yet written: in
flight; `replayed` the events re-submitted from the write-ahead log at
start-up). With several stores (database.type a list) every store receives
every event, so the identity holds for each store on its own: its StoreBook
(`Ledger.books`) holds written, duplicates, dead_lettered and lost for that
store, `pending` is its lane's (queued, being written, or in its spill), and
`spill_recovered` (events an earlier run left in its spill) joins `replayed`
on the left. The Ledger's own written/duplicates/dead_lettered/lost are the
sums over the books, which is the identity itself when there is one store.

Other modules read the counters and change them only through the verbs below
(a store's through its StoreBook); whoever decides what happens to events
calls the verb, once per request or per batch, never per event:

- a request's events are counted as received exactly once: by `received`
  after validation, or by `refused_whole` when the request is refused before
  validation (their events are then received and rejected at once, as event
  type "unknown": nothing read their types);
- the pipeline counts what it refuses after validation (`rejected`) and what
  becomes of what it accepted (`stored`, `dead_lettered`);
- a request whose events cannot be counted (not decodable, too large, an
  empty batch) is counted by `request_refused`, outside the identity.

All of it changes on the event loop only, and /metrics is rendered there too,
so one scrape sees the equation hold exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from aep.events.event_types import EVENT_TYPE_COUNT

# events_received_by_type is indexed by the EventType number; events of other
# numbers (and of requests refused whole) are counted in events_received only.


class Rejection(Enum):
    """Why events were refused at the API (the `reason` of events_rejected_total)."""

    INVALID = "invalid"  # INVALID_ARGUMENT / FAILED_PRECONDITION
    OVERLOAD = "overload"  # RESOURCE_EXHAUSTED: the queue bound
    UNAVAILABLE = "unavailable"  # UNAVAILABLE: shutting down, or the write-ahead log failed


class RequestRejection(Enum):
    """Why a request was refused before its events could be counted."""

    MALFORMED = "malformed"  # the bytes are not the request message
    TOO_LARGE = "too_large"  # over server.max_message_bytes: not decoded
    EMPTY = "empty"  # a batch or stream chunk without events


def type_tally() -> list[int]:
    """A request's per-type counts, filled by validation's pass, given to `received`."""
    return [0] * EVENT_TYPE_COUNT


class StoreBook:
    """What became of the events one store's lane took (the per-store half of the books)."""

    __slots__ = (
        "batches_written",
        "events_dead_lettered",
        "events_duplicate",
        "events_lost",
        "events_spill_recovered",
        "events_spilled",
        "events_written",
        "store",
        "write_failures",
    )

    def __init__(self, store: str) -> None:
        self.store = store
        self.events_written = 0
        self.events_duplicate = 0
        self.events_dead_lettered = 0
        self.events_lost = 0
        self.batches_written = 0
        self.write_failures = 0
        # Events put in the store's spill (a lane was full); in flight until stored.
        self.events_spilled = 0
        # Events an earlier run left in the spill, taken back into the lane.
        self.events_spill_recovered = 0

    def stored(self, written: int, duplicates: int) -> None:
        """One batch written: `written` new events, `duplicates` already stored."""
        self.events_written += written
        self.events_duplicate += duplicates
        self.batches_written += 1

    def write_failed(self) -> None:
        """One store write attempt failed (it is retried, then dead-lettered)."""
        self.write_failures += 1

    def dead_lettered(self, saved: int, lost: int) -> None:
        """A batch given up on: `saved` events in the dead-letter file, `lost` not."""
        self.events_dead_lettered += saved
        self.events_lost += lost


class Ledger:
    __slots__ = (
        "books",
        "events_received",
        "events_received_by_type",
        "events_rejected_invalid",
        "events_rejected_overload",
        "events_rejected_unavailable",
        "events_replayed",
        "requests_rejected",
        "wal_backlog_events",
        "wal_damaged_records",
        "wal_segments_quarantined",
        "wal_skipped_bytes",
    )

    def __init__(self) -> None:
        self.events_received = 0
        self.events_received_by_type = type_tally()
        self.events_replayed = 0
        self.events_rejected_invalid = 0
        self.events_rejected_overload = 0
        self.events_rejected_unavailable = 0
        # One per store, in database.type's order (created by book()).
        self.books: dict[str, StoreBook] = {}
        self.requests_rejected = dict.fromkeys(RequestRejection, 0)
        # Found in the write-ahead log at start-up: segments with damage (set aside
        # in quarantine/ once replayed), damaged stretches skipped, and their bytes.
        self.wal_segments_quarantined = 0
        self.wal_damaged_records = 0
        self.wal_skipped_bytes = 0
        # Events earlier runs left in the write-ahead log and not yet re-submitted;
        # outside the equation until replayed (they were received by another process).
        self.wal_backlog_events = 0

    def book(self, store: str) -> StoreBook:
        """The books of one store (made on first use)."""
        book = self.books.get(store)
        if book is None:
            book = self.books[store] = StoreBook(store)
        return book

    @property
    def events_written(self) -> int:
        return sum(book.events_written for book in self.books.values())

    @property
    def events_duplicate(self) -> int:
        return sum(book.events_duplicate for book in self.books.values())

    @property
    def events_dead_lettered(self) -> int:
        return sum(book.events_dead_lettered for book in self.books.values())

    @property
    def events_lost(self) -> int:
        return sum(book.events_lost for book in self.books.values())

    @property
    def batches_written(self) -> int:
        return sum(book.batches_written for book in self.books.values())

    @property
    def write_failures(self) -> int:
        return sum(book.write_failures for book in self.books.values())

    @property
    def events_rejected(self) -> int:
        return (
            self.events_rejected_invalid
            + self.events_rejected_overload
            + self.events_rejected_unavailable
        )

    # -- at the API ----------------------------------------------------------------
    def received(self, count: int, by_type: Sequence[int], invalid: int) -> None:
        """A validated request: `count` events (`by_type` of them per type), `invalid` refused."""
        self.events_received += count
        self.events_rejected_invalid += invalid
        totals = self.events_received_by_type
        for number, events in enumerate(by_type):
            totals[number] += events

    def received_one(self, event_type: int, *, invalid: bool) -> None:
        """A validated single-event request (no per-request tally to allocate)."""
        self.events_received += 1
        if invalid:
            self.events_rejected_invalid += 1
        if 0 <= event_type < EVENT_TYPE_COUNT:
            self.events_received_by_type[event_type] += 1

    def refused_whole(self, count: int, reason: Rejection) -> None:
        """A request refused before validation: its events are received and rejected."""
        self.events_received += count
        self.rejected(count, reason)

    def rejected(self, count: int, reason: Rejection) -> None:
        """Validated events refused (by the pipeline: overload, unavailable)."""
        if reason is Rejection.OVERLOAD:
            self.events_rejected_overload += count
        elif reason is Rejection.UNAVAILABLE:
            self.events_rejected_unavailable += count
        else:
            self.events_rejected_invalid += count

    def request_refused(self, reason: RequestRejection) -> None:
        self.requests_rejected[reason] += 1

    # -- the write-ahead log at start-up ---------------------------------------------
    def log_opened(
        self, *, quarantined: int, damaged_records: int, skipped_bytes: int, backlog: int
    ) -> None:
        """What the write-ahead log held from earlier runs."""
        self.wal_segments_quarantined = quarantined
        self.wal_damaged_records = damaged_records
        self.wal_skipped_bytes = skipped_bytes
        self.wal_backlog_events = backlog

    def replayed(self, count: int, from_backlog: int) -> None:
        """`count` events re-submitted from the log; the backlog shrinks by `from_backlog`."""
        self.events_replayed += count
        self.wal_backlog_events -= from_backlog

    def backlog_settled(self, count: int) -> None:
        """`count` events of the backlog will not be replayed in this run (unreadable)."""
        self.wal_backlog_events -= count
