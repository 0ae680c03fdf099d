"""Plain counters on the hot path; telemetry reads them when scraped.

Conservation, checked by tests and an alert: every event received ends in
exactly one of these, so at any moment

    received + replayed = rejected_invalid + rejected_overload
                          + rejected_unavailable + written + duplicates
                          + dead_lettered + lost + pending

(`pending` is the pipeline's count of accepted events not yet written: in
flight; `replayed` the events re-submitted from the write-ahead log at
start-up). All of it changes on the event loop only, and /metrics is
rendered there too, so one scrape sees the equation hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aep.events.event_types import EVENT_TYPE_COUNT as EVENT_TYPE_COUNT  # for the servicer

# received_by_type is indexed by the EventType number; events of other numbers
# (and of requests refused whole) are counted in `received` only.


@dataclass(slots=True)
class IngestStats:
    received: int = 0
    received_by_type: list[int] = field(default_factory=lambda: [0] * EVENT_TYPE_COUNT)
    replayed: int = 0
    rejected_invalid: int = 0
    rejected_overload: int = 0
    rejected_unavailable: int = 0
    written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    lost: int = 0
    batches_written: int = 0
    write_failures: int = 0
    # Found in the write-ahead log at start-up: segments with damage (set aside
    # in quarantine/ once replayed), damaged stretches skipped, and their bytes.
    wal_segments_quarantined: int = 0
    wal_damaged_records: int = 0
    wal_skipped_bytes: int = 0
    # Events earlier runs left in the write-ahead log and not yet re-submitted;
    # outside the equation until replayed (they were received by another process).
    wal_backlog_events: int = 0
