"""The stored form of an event: a flat dict with snake_case keys.

Every store writes these keys (DESIGN.md §3): event_id, user_id, ad_id,
event_type (the enum name), timestamp (RFC 3339, UTC, microseconds),
received_at, the optional ad hierarchy ids, price_micros, currency and
attributes. Built straight from the protobuf fields: no MessageToDict, no
per-event reflection.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from aep.proto.adevents.v1 import ad_events_pb2 as pb

EventRecord = dict[str, Any]

EVENT_TYPE_NAMES: dict[int, str] = {
    value.number: value.name for value in pb.EventType.DESCRIPTOR.values
}


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_timestamp(seconds: int, nanos: int) -> str:
    """RFC 3339 in UTC with microseconds: 2026-11-26T19:00:00.123456Z."""
    return f"{_second_prefix(seconds)}.{nanos // 1000:06d}Z"


def format_epoch(epoch_seconds: float) -> str:
    whole = int(epoch_seconds)
    return format_timestamp(whole, int((epoch_seconds - whole) * 1e9))


def to_record(event: pb.AdEvent, event_id: str, received_at: str) -> EventRecord:
    timestamp = event.timestamp
    attributes = event.attributes
    return {
        "event_id": event_id,
        "user_id": event.user_id,
        "ad_id": event.ad_id,
        "event_type": EVENT_TYPE_NAMES[event.event_type],
        "timestamp": format_timestamp(timestamp.seconds, timestamp.nanos),
        "received_at": received_at,
        "campaign_id": event.campaign_id,
        "creative_id": event.creative_id,
        "placement_id": event.placement_id,
        "publisher_id": event.publisher_id,
        "price_micros": event.price_micros,
        "currency": event.currency,
        "attributes": dict(attributes) if attributes else {},
    }
