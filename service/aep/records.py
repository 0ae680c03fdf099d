"""The stored form of an event: a flat dict with snake_case keys.

Every store writes these keys (DESIGN.md §3): event_id, user_id, ad_id,
event_type (the enum name), timestamp (RFC 3339, UTC, microseconds),
received_at, the optional ad hierarchy ids, price_micros, currency and
attributes. Built straight from the protobuf fields (EventValidator.accept):
no MessageToDict, no per-event reflection.
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
def second_prefix(seconds: int) -> str:
    """`2026-11-26T19:00:00`: the part of a timestamp shared by a whole second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_timestamp(seconds: int, nanos: int) -> str:
    """RFC 3339 in UTC with microseconds: 2026-11-26T19:00:00.123456Z."""
    return f"{second_prefix(seconds)}.{nanos // 1000:06d}Z"


def format_epoch(epoch_seconds: float) -> str:
    """time.time() as RFC 3339 in UTC with microseconds (received_at)."""
    whole = int(epoch_seconds)
    return f"{second_prefix(whole)}.{int((epoch_seconds - whole) * 1e6):06d}Z"
