"""The stored form of an event: a flat dict with snake_case keys, named once.

STORED_FIELDS is the one definition of the stored fields, their order and their
kinds (DESIGN.md §3): event_id first, user_id, ad_id, event_type (the enum
name), timestamp (RFC 3339, UTC, microseconds), received_at, then the optional
fields. Validation builds records in this order, the file codecs, Redis and
MongoDB take their field lists and encodings from it, and as_stored_form checks
records read back against it. A test holds it to the proto's StoredAdEvent and
AdEvent, so a field added there and not here (or the other way round) fails.

Records are built straight from the protobuf fields (EventValidator.accept):
no MessageToDict, no per-event reflection.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any

from aep.events.event_types import VALID_EVENT_TYPE_NAMES

EventRecord = dict[str, Any]


class FieldKind(Enum):
    """What a stored field holds; each store encodes a kind one way."""

    ID = "id"  # text of at most validation.max_id_length characters
    TEXT = "text"  # other text (currency)
    EVENT_TYPE = "event_type"  # the EventType value's name
    TIMESTAMP = "timestamp"  # RFC 3339 text in UTC with microseconds
    INT64 = "int64"  # a non-negative int64
    STRING_MAP = "string_map"  # string keys to string values


@dataclass(frozen=True, slots=True)
class StoredField:
    """One field of the stored form."""

    name: str
    kind: FieldKind
    # Required: a non-empty value in every record. Optional: a record without the
    # field (written by an older server) means `default`.
    required: bool = False
    default: str | int | None = None
    # Copied from the AdEvent field of the same name; False: set by the server.
    from_client: bool = True

    def default_value(self) -> Any:
        """The value of an optional field a record does not have (a new dict for maps)."""
        return {} if self.kind is FieldKind.STRING_MAP else self.default


STORED_FIELDS: tuple[StoredField, ...] = (
    # First by contract: the idempotency key, and where the JSON Lines codec cuts
    # a batch into lines.
    StoredField("event_id", FieldKind.ID, required=True),
    StoredField("user_id", FieldKind.ID, required=True),
    StoredField("ad_id", FieldKind.ID, required=True),
    StoredField("event_type", FieldKind.EVENT_TYPE, required=True),
    StoredField("timestamp", FieldKind.TIMESTAMP, required=True),
    StoredField("received_at", FieldKind.TIMESTAMP, required=True, from_client=False),
    StoredField("campaign_id", FieldKind.ID, default=""),
    StoredField("creative_id", FieldKind.ID, default=""),
    StoredField("placement_id", FieldKind.ID, default=""),
    StoredField("publisher_id", FieldKind.ID, default=""),
    StoredField("price_micros", FieldKind.INT64, default=0),
    StoredField("currency", FieldKind.TEXT, default=""),
    StoredField("attributes", FieldKind.STRING_MAP),
)
# AdEvent fields the stored form leaves out, each with the reason. None so far:
# every field a client sends is stored.
NOT_STORED_AD_EVENT_FIELDS: dict[str, str] = {}

STORED_FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in STORED_FIELDS)
KEY_FIELD: str = STORED_FIELDS[0].name
REQUIRED_STORED_KEYS: tuple[str, ...] = tuple(f.name for f in STORED_FIELDS if f.required)
OPTIONAL_STORED_FIELDS: tuple[StoredField, ...] = tuple(
    field for field in STORED_FIELDS if not field.required
)


def stored_names(*kinds: FieldKind) -> tuple[str, ...]:
    """The names of the stored fields of these kinds, in stored order."""
    return tuple(field.name for field in STORED_FIELDS if field.kind in kinds)


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


_RFC3339_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _timestamp_problem(key: str, value: object) -> str | None:
    try:
        if not isinstance(value, str) or not _RFC3339_MICROS.fullmatch(value):
            raise ValueError
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")  # a real date and time
    except ValueError:
        return f"{key} {value!r} is not RFC 3339 UTC with microseconds"
    return None


def as_stored_form(value: object) -> EventRecord | str:
    """value as a stored-form record, else what is wrong with it.

    For records read back from outside the pipeline (dead-letter files): every
    required field with its type, no unknown key; optional fields an older
    server did not write get their defaults, so every store receives the full form.
    """
    if not isinstance(value, dict):
        return f"the event is a {type(value).__name__}, not an object"
    for key in REQUIRED_STORED_KEYS:
        if key not in value:
            return f"missing {key}"
        if not isinstance(value[key], str) or not value[key]:
            return f"{key} must be a non-empty string, not {value[key]!r}"
    unknown = sorted(set(value) - set(STORED_FIELD_NAMES))
    if unknown:
        return f"unknown keys {unknown}"
    record: EventRecord = {}
    for field in STORED_FIELDS:
        item = value[field.name] if field.required else value.get(field.name, field.default_value())
        problem = _KIND_PROBLEMS[field.kind](field.name, item)
        if problem:
            return problem
        record[field.name] = dict(item) if field.kind is FieldKind.STRING_MAP else item
    return record


def _text_problem(key: str, value: object) -> str | None:
    return None if isinstance(value, str) else f"{key} must be a string, not {value!r}"


def _event_type_problem(key: str, value: object) -> str | None:
    valid = VALID_EVENT_TYPE_NAMES.values()
    if value in valid:
        return None
    return f"{key} {value!r} is not one of {sorted(valid)}"


def _int64_problem(key: str, value: object) -> str | None:
    if type(value) is int and 0 <= value < 2**63:
        return None
    return f"{key} must be a non-negative int64, not {value!r}"


def _string_map_problem(key: str, value: object) -> str | None:
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None
    return f"{key} must map strings to strings, not {value!r}"


_KIND_PROBLEMS: dict[FieldKind, Callable[[str, Any], str | None]] = {
    FieldKind.ID: _text_problem,
    FieldKind.TEXT: _text_problem,
    FieldKind.EVENT_TYPE: _event_type_problem,
    FieldKind.TIMESTAMP: _timestamp_problem,
    FieldKind.INT64: _int64_problem,
    FieldKind.STRING_MAP: _string_map_problem,
}
