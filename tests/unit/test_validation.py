from __future__ import annotations

import time

import pytest

from aep.events.validation import EventValidator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings
from tests.helpers.support import now_timestamp, valid_event

VALIDATOR = EventValidator(
    ValidationSettings(
        max_id_length=16,
        max_attributes=2,
        max_attribute_key_length=8,
        max_attribute_value_length=10,
        max_event_age=3600,
        max_clock_skew=60,
    )
)


def problem(event: pb.AdEvent) -> str | None:
    return VALIDATOR.problem(event, time.time())


def test_a_valid_event_passes() -> None:
    assert problem(valid_event()) is None
    full = valid_event(
        event_id="e-1",
        campaign_id="c",
        creative_id="cr",
        placement_id="p",
        publisher_id="pub",
        price_micros=1_500_000,
        currency="EUR",
        attributes={"os": "ios", "geo": "FR"},
    )
    assert problem(full) is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u" * 17}, "user_id"),
        ({"ad_id": ""}, "ad_id"),
        ({"ad_id": "a" * 17}, "ad_id"),
        ({"event_id": "e" * 17}, "event_id"),
        ({"event_type": pb.EVENT_TYPE_UNSPECIFIED}, "event_type"),
        ({"event_type": 42}, "event_type"),
        ({"timestamp_offset_s": -7200}, "timestamp"),
        ({"timestamp_offset_s": +120}, "timestamp"),
        ({"campaign_id": "c" * 17}, "campaign_id"),
        ({"publisher_id": "p" * 17}, "publisher_id"),
        ({"price_micros": -1, "currency": "USD"}, "price_micros"),
        ({"price_micros": 5}, "currency"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "US"}, "currency"),
        ({"attributes": {"a": "1", "b": "2", "c": "3"}}, "attributes"),
        ({"attributes": {"k" * 9: "v"}}, "attributes"),
        ({"attributes": {"": "v"}}, "attributes"),
        ({"attributes": {"k": "v" * 11}}, "attributes[k]"),
    ],
)
def test_each_rule_names_its_field(overrides: dict[str, object], field: str) -> None:
    if "timestamp_offset_s" in overrides:  # made now, not when the module was collected
        overrides = dict(overrides)
        offset = overrides.pop("timestamp_offset_s")
        assert isinstance(offset, int)
        overrides = {**overrides, "timestamp": now_timestamp(offset)}
    reason = problem(valid_event(**overrides))
    assert reason is not None
    assert reason.startswith(f"{field}:"), reason


def test_missing_timestamp_is_refused() -> None:
    event = valid_event()
    event.ClearField("timestamp")
    assert problem(event) == "timestamp: required"


def test_clock_skew_window_edges() -> None:
    assert problem(valid_event(timestamp=now_timestamp(-3500))) is None
    assert problem(valid_event(timestamp=now_timestamp(+50))) is None


def test_a_missing_timestamp_is_refused_at_the_longest_allowed_age() -> None:
    from aep.settings import MAX_EVENT_AGE_S

    validator = EventValidator(ValidationSettings(max_event_age=MAX_EVENT_AGE_S))
    event = valid_event()
    event.ClearField("timestamp")
    by_type = [0] * 4
    verdicts = validator.accept_all((event,), time.time(), "now", lambda n: ["id"] * n, by_type)
    assert verdicts.records == []
    assert verdicts.rejected == [(0, "", "timestamp: required")]
    assert by_type == [0, 0, 1, 0]  # counted as received, by its type (a click)
