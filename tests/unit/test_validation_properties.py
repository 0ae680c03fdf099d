"""Property tests: the hot path (accept_all) and the readable rules (problem) agree."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from aep.events.validation import EventValidator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings
from tests.helpers.support import accept_one

VALIDATOR = EventValidator(
    ValidationSettings(
        max_id_length=8,
        max_attributes=3,
        max_attribute_key_length=4,
        max_attribute_value_length=5,
        max_event_age=100,
        max_clock_skew=10,
    )
)
NOW = time.time()

short_text = st.text(max_size=10)
ids = st.one_of(st.just(""), short_text)


@st.composite
def events(draw: st.DrawFn) -> pb.AdEvent:
    event = pb.AdEvent(
        event_id=draw(ids),
        user_id=draw(ids),
        ad_id=draw(ids),
        event_type=pb.EventType.ValueType(draw(st.integers(min_value=0, max_value=5))),
        campaign_id=draw(ids),
        creative_id=draw(ids),
        placement_id=draw(ids),
        publisher_id=draw(ids),
        price_micros=draw(st.integers(min_value=-5, max_value=5)),
        currency=draw(st.sampled_from(["", "USD", "usd", "EURO", "X"])),
        attributes=draw(st.dictionaries(st.text(max_size=6), st.text(max_size=7), max_size=5)),
    )
    if draw(st.booleans()):
        stamp = Timestamp()
        stamp.FromNanoseconds(int((NOW + draw(st.floats(min_value=-150, max_value=20))) * 1e9))
        event.timestamp.CopyFrom(stamp)
    return event


@settings(max_examples=2000, deadline=None)
@given(events())
def test_accept_and_problem_agree(event: pb.AdEvent) -> None:
    outcome = accept_one(VALIDATOR, event, NOW, "received", lambda: "server-id")
    problem = VALIDATOR.problem(event, NOW)
    if problem is None:
        assert isinstance(outcome, dict), outcome
        assert outcome["event_id"] == (event.event_id or "server-id")
        assert outcome["user_id"] == event.user_id
        assert outcome["attributes"] == dict(event.attributes)
    else:
        assert outcome == problem
        field = problem.split(":", 1)[0].split("[", 1)[0]
        assert field in {f.name for f in pb.AdEvent.DESCRIPTOR.fields}, problem
