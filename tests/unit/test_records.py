from __future__ import annotations

import datetime

from aep.events.schema import EventRecord, format_timestamp
from aep.events.validation import EventValidator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings
from tests.helpers.support import accept_one, valid_event


def to_record(event: pb.AdEvent, event_id: str, received_at: str) -> EventRecord:
    event.event_id = event_id
    record = accept_one(
        EventValidator(ValidationSettings()),
        event,
        event.timestamp.seconds,
        received_at,
        lambda: "unused",
    )
    assert isinstance(record, dict)
    return record


def test_stored_form_has_the_contract_keys() -> None:
    event = valid_event(
        event_type=pb.EVENT_TYPE_CONVERSION,
        price_micros=2_000_000,
        currency="USD",
        attributes={"os": "android"},
    )
    record = to_record(event, "id-1", "2026-01-01T00:00:00.000000Z")
    assert record["event_id"] == "id-1"
    assert record["event_type"] == "EVENT_TYPE_CONVERSION"
    assert record["user_id"] == "user-1"
    assert record["ad_id"] == "ad-1"
    assert record["price_micros"] == 2_000_000
    assert record["attributes"] == {"os": "android"}
    assert record["received_at"] == "2026-01-01T00:00:00.000000Z"
    parsed = datetime.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - event.timestamp.ToNanoseconds() / 1e9) < 1e-5


def test_timestamps_are_rfc3339_utc() -> None:
    assert format_timestamp(0, 0) == "1970-01-01T00:00:00.000000Z"
    expected = datetime.datetime.fromtimestamp(1_795_000_000, tz=datetime.UTC)
    assert format_timestamp(1_795_000_000, 123_456_789) == (
        expected.strftime("%Y-%m-%dT%H:%M:%S") + ".123456Z"
    )
