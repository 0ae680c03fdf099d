"""Plain counters on the hot path; telemetry reads them when scraped.

Conservation, checked by tests and an alert: every event received ends in
exactly one of these, so at any moment

    received + replayed = rejected_invalid + rejected_overload
                          + rejected_unavailable + written + duplicates
                          + dead_lettered + lost + pending

(`pending` is the pipeline's count of accepted events not yet written;
`replayed` the events re-submitted from the write-ahead log at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class IngestStats:
    received: int = 0
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
