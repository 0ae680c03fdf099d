"""Dead-letter test helpers: events in the stored form, and what a file really holds."""

from __future__ import annotations

from pathlib import Path

import orjson

from aep.events.schema import EventRecord


def stored_record(index: int, **overrides: object) -> EventRecord:
    """Event `e<index>` in the stored form the server builds (every field)."""
    record: EventRecord = {
        "event_id": f"e{index}",
        "user_id": f"user-{index}",
        "ad_id": "ad-1",
        "event_type": "EVENT_TYPE_CLICK",
        "timestamp": "2026-01-02T03:04:05.123456Z",
        "received_at": "2026-01-02T03:04:06.000001Z",
        "campaign_id": "campaign-7",
        "creative_id": "",
        "placement_id": "",
        "publisher_id": "publisher-3",
        "price_micros": 1500,
        "currency": "EUR",
        "attributes": {"country": "DE"},
    }
    record.update(overrides)
    return record


def stored_records(start: int, count: int) -> list[EventRecord]:
    return [stored_record(index) for index in range(start, start + count)]


def complete_entries(directory: Path) -> list[str]:
    """The event_ids of every whole dead-letter line under directory (any subfolder).

    A line counts when it ends in a newline and parses as an entry with an event;
    a torn line, or a torn line with the next entry glued to it, does not.
    """
    ids: list[str] = []
    for path in sorted(directory.rglob("dead-letter-*.jsonl")):
        data = path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        for line in whole.splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("event"), dict):
                ids.append(str(entry["event"]["event_id"]))
    return ids
