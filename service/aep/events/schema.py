"""The stored form of an event: a flat dict with snake_case keys.

Every store writes these keys (DESIGN.md §3): event_id, user_id, ad_id,
event_type (the enum name), timestamp (RFC 3339, UTC, microseconds),
received_at, the optional ad hierarchy ids, price_micros, currency and
attributes. Built straight from the protobuf fields (EventValidator.accept):
no MessageToDict, no per-event reflection.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
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


# The stored form's keys in their order: the required ones (non-empty strings),
# then the optional ones with the value a record without them means.
REQUIRED_STORED_KEYS = ("event_id", "user_id", "ad_id", "event_type", "timestamp", "received_at")
OPTIONAL_STORED_DEFAULTS: dict[str, Any] = {
    "campaign_id": "",
    "creative_id": "",
    "placement_id": "",
    "publisher_id": "",
    "price_micros": 0,
    "currency": "",
    "attributes": {},
}
_STORED_EVENT_TYPES = frozenset(
    name for number, name in EVENT_TYPE_NAMES.items() if number != pb.EVENT_TYPE_UNSPECIFIED
)
_RFC3339_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _timestamp_problem(key: str, value: str) -> str | None:
    try:
        if not _RFC3339_MICROS.fullmatch(value):
            raise ValueError
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")  # a real date and time
    except ValueError:
        return f"{key} {value!r} is not RFC 3339 UTC with microseconds"
    return None


def as_stored_form(value: object) -> EventRecord | str:
    """value as a stored-form record, else what is wrong with it.

    For records read back from outside the pipeline (dead-letter files): every
    required key with its type, no unknown key; optional keys an older server
    did not write get their defaults, so every store receives the full form.
    """
    if not isinstance(value, dict):
        return f"the event is a {type(value).__name__}, not an object"
    for key in REQUIRED_STORED_KEYS:
        if key not in value:
            return f"missing {key}"
        if not isinstance(value[key], str) or not value[key]:
            return f"{key} must be a non-empty string, not {value[key]!r}"
    unknown = sorted(set(value) - set(REQUIRED_STORED_KEYS) - set(OPTIONAL_STORED_DEFAULTS))
    if unknown:
        return f"unknown keys {unknown}"
    if value["event_type"] not in _STORED_EVENT_TYPES:
        return f"event_type {value['event_type']!r} is not one of {sorted(_STORED_EVENT_TYPES)}"
    for key in ("timestamp", "received_at"):
        problem = _timestamp_problem(key, value[key])
        if problem:
            return problem
    record: EventRecord = {key: value[key] for key in REQUIRED_STORED_KEYS}
    for key, default in OPTIONAL_STORED_DEFAULTS.items():
        item = value.get(key, default)
        if key == "price_micros":
            if type(item) is not int or not 0 <= item < 2**63:
                return f"price_micros must be a non-negative int64, not {item!r}"
        elif key == "attributes":
            if not isinstance(item, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in item.items()
            ):
                return f"attributes must map strings to strings, not {item!r}"
            item = dict(item)
        elif not isinstance(item, str):
            return f"{key} must be a string, not {item!r}"
        record[key] = item
    return record
