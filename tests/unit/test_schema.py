"""The stored-event schema (aep.events.schema.STORED_FIELDS) against the proto and
the code that builds records: a field added in one place and not the others fails here."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from aep.events.event_types import (
    EVENT_TYPE_COUNT,
    EVENT_TYPE_NAMES,
    EVENT_TYPE_NUMBERS,
    EVENT_TYPE_SHORT_NAMES,
    VALID_EVENT_TYPE_NAMES,
    VALID_EVENT_TYPES,
)
from aep.events.schema import (
    KEY_FIELD,
    NOT_STORED_AD_EVENT_FIELDS,
    STORED_FIELD_NAMES,
    STORED_FIELDS,
    EventRecord,
    FieldKind,
    as_stored_form,
)
from aep.events.validation import EventValidator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings
from tests.helpers.support import full_stored_record

_SCALAR_TYPES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_BYTES: "bytes",
}


def proto_type(field: FieldDescriptor) -> str:
    """A field's type as the proto file spells it."""
    if field.enum_type is not None:
        return field.enum_type.full_name
    entry = field.message_type
    if entry is not None:
        if entry.GetOptions().map_entry:
            key, value = (proto_type(part) for part in entry.fields)
            return f"map<{key}, {value}>"
        return entry.full_name
    name = _SCALAR_TYPES.get(field.type, f"type {field.type}")
    return f"repeated {name}" if field.is_repeated else name


# The proto type each kind has in StoredAdEvent, and in AdEvent where it differs.
STORED_TYPE_OF_KIND = {
    FieldKind.ID: "string",
    FieldKind.TEXT: "string",
    FieldKind.EVENT_TYPE: "adevents.v1.EventType",
    FieldKind.TIMESTAMP: "string",  # RFC 3339 text, as in the JSON form
    FieldKind.INT64: "int64",
    FieldKind.STRING_MAP: "map<string, string>",
}
CLIENT_TYPE_OF_KIND = {**STORED_TYPE_OF_KIND, FieldKind.TIMESTAMP: "google.protobuf.Timestamp"}


def fields_of(message: Descriptor) -> list[tuple[str, str]]:
    return [(field.name, proto_type(field)) for field in message.fields]


def test_the_schema_is_stored_ad_event_field_for_field() -> None:
    """Names, order and types; numbers 1, 2, 3... in that order (fields are appended)."""
    schema = [(field.name, STORED_TYPE_OF_KIND[field.kind]) for field in STORED_FIELDS]
    assert schema == fields_of(pb.StoredAdEvent.DESCRIPTOR)
    numbers = [field.number for field in pb.StoredAdEvent.DESCRIPTOR.fields]
    assert numbers == list(range(1, len(STORED_FIELDS) + 1))


def test_every_ad_event_field_is_stored_unless_listed_with_a_reason() -> None:
    ad_event = dict(fields_of(pb.AdEvent.DESCRIPTOR))
    assert set(NOT_STORED_AD_EVENT_FIELDS) <= set(ad_event), "a listed field is not in AdEvent"
    assert all(NOT_STORED_AD_EVENT_FIELDS.values()), "every left-out field needs its reason"
    sent = {name: kind for name, kind in ad_event.items() if name not in NOT_STORED_AD_EVENT_FIELDS}
    from_client = {
        field.name: CLIENT_TYPE_OF_KIND[field.kind] for field in STORED_FIELDS if field.from_client
    }
    assert from_client == sent


def test_the_key_field_comes_first_and_required_fields_before_optional_ones() -> None:
    assert STORED_FIELD_NAMES[0] == KEY_FIELD == "event_id"
    required = [field.required for field in STORED_FIELDS]
    assert required == sorted(required, reverse=True)
    for field in STORED_FIELDS:
        if field.required:
            assert field.default is None, field.name
        else:
            assert field.default_value() is not None, field.name


def test_event_type_tables_follow_the_enum() -> None:
    values = {value.number: value.name for value in pb.EventType.DESCRIPTOR.values}
    assert values == EVENT_TYPE_NAMES
    assert {name: number for number, name in values.items()} == EVENT_TYPE_NUMBERS
    valid = {n: name for n, name in values.items() if n != pb.EVENT_TYPE_UNSPECIFIED}
    assert valid == VALID_EVENT_TYPE_NAMES
    assert list(VALID_EVENT_TYPES) == sorted(valid)
    assert EVENT_TYPE_SHORT_NAMES == {1: "impression", 2: "click", 3: "conversion"}
    assert max(values) + 1 == EVENT_TYPE_COUNT


def ad_event_from(record: EventRecord) -> pb.AdEvent:
    """The AdEvent a client sends for this stored record (every client field set)."""
    event = pb.AdEvent()
    for field in STORED_FIELDS:
        if not field.from_client:
            continue
        value = record[field.name]
        if field.kind is FieldKind.TIMESTAMP:
            stamp = Timestamp()
            stamp.FromJsonString(value)
            getattr(event, field.name).CopyFrom(stamp)
        elif field.kind is FieldKind.EVENT_TYPE:
            setattr(event, field.name, EVENT_TYPE_NUMBERS[value])
        elif field.kind is FieldKind.STRING_MAP:
            getattr(event, field.name).update(value)
        else:
            setattr(event, field.name, value)
    return event


def test_validation_builds_every_stored_field_in_schema_order() -> None:
    """The validator's written-out record is the schema's: a client field it does not
    copy (or copies under another name or out of order) fails here."""
    expected = full_stored_record("sent-id")
    event = ad_event_from(expected)
    set_fields = {field.name for field, _ in event.ListFields()}
    assert set_fields == {field.name for field in STORED_FIELDS if field.from_client}
    validator = EventValidator(ValidationSettings())
    verdicts = validator.accept_all(
        (event,), event.timestamp.seconds, str(expected["received_at"]), lambda n: [], []
    )
    assert not verdicts.rejected, verdicts.rejected
    [record] = verdicts.records
    assert list(record) == list(STORED_FIELD_NAMES)
    assert record == expected


def test_a_validated_record_is_its_own_stored_form() -> None:
    record = full_stored_record()
    assert as_stored_form(record) == record


@pytest.mark.parametrize("missing", [field.name for field in STORED_FIELDS if not field.required])
def test_stored_form_fills_in_each_optional_field(missing: str) -> None:
    record = full_stored_record()
    del record[missing]
    stored = as_stored_form(record)
    assert isinstance(stored, dict), stored
    assert list(stored) == list(STORED_FIELD_NAMES)
    [field] = [field for field in STORED_FIELDS if field.name == missing]
    assert stored[missing] == field.default_value()


def test_every_kind_is_checked_on_read_back_and_has_a_redis_text_form() -> None:
    from aep.events import schema
    from aep.storage import redis

    assert set(schema._KIND_PROBLEMS) == set(FieldKind)
    assert set(redis._TEXT_OF_KIND) == set(FieldKind)
