"""The native pass and the Python reference give the same answer to every request.

Same verdict per event, same response bytes, counts, per-type counts and
stored bytes (tests/helpers/codec_wire.py: the strategies and the comparison). The
number of examples per test is AEP_CODEC_EXAMPLES (default: a bounded CI
run); the sanitizer run (tests/unit/test_codec_sanitizers.py) runs this
module again under AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from aep.events.codec import RequestKind, native_codec_problem
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from tests.helpers.codec_wire import (
    DEFAULTS,
    NOW,
    TIGHT,
    CodecPair,
    any_request,
    compare,
    delimited,
    kinds,
    nested_groups,
    pair,
    raw_request,
    tag,
    varint,
)

if native_codec_problem() is not None:
    pytest.skip(f"the native codec is not built: {native_codec_problem()}", allow_module_level=True)

EXAMPLES = int(os.environ.get("AEP_CODEC_EXAMPLES", "600"))
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CODECS = {"tight": pair(TIGHT), "defaults": pair(DEFAULTS)}
_OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _print_outcomes() -> object:
    yield
    print(f"codec differential outcomes: {dict(_OUTCOMES)}")


def _check(
    codecs: CodecPair, kind: RequestKind, raw: bytes, received_at: str | None = None
) -> None:
    outcome = compare(codecs, kind, raw, received_at=received_at)
    _OUTCOMES[outcome] += 1
    if currently_in_test_context():
        event(outcome)


# -- events a protobuf library writes: arbitrary text, the whole value range -------------

identifiers = st.one_of(st.just(""), st.text(max_size=10))


@st.composite
def library_events(draw: st.DrawFn) -> pb.AdEvent:
    plausible = draw(st.integers(0, 3)) > 0  # the required fields set, mostly valid
    required = st.text(min_size=1, max_size=6) if plausible else identifiers
    message = pb.AdEvent(
        event_id=draw(identifiers),
        user_id=draw(required),
        ad_id=draw(required),
        event_type=pb.EventType.ValueType(
            draw(st.integers(1, 3) if plausible else st.integers(-1, 5))
        ),
        campaign_id=draw(identifiers),
        creative_id=draw(identifiers),
        placement_id=draw(identifiers),
        publisher_id=draw(identifiers),
        price_micros=draw(st.sampled_from([0, 0, 1, -5, 2**63 - 1])),
        currency=draw(st.sampled_from(["", "", "USD", "usd", "EURO", "X", "ÜSD"])),
        attributes=draw(st.dictionaries(st.text(max_size=4), st.text(max_size=5), max_size=4)),
    )
    if message.price_micros and plausible:
        message.currency = "USD"
    if draw(st.integers(0, 9)):
        stamp = Timestamp()
        span = (-120, 20) if plausible else (-(8 * 86400), 400)
        offset = draw(st.floats(min_value=span[0], max_value=span[1], allow_nan=False))
        stamp.FromNanoseconds(int((NOW + offset) * 1e9))
        message.timestamp.CopyFrom(stamp)
    return message


@_SETTINGS
@given(st.sampled_from(sorted(CODECS)), st.lists(library_events(), max_size=13), st.data())
def test_library_written_batches(name: str, events: list[pb.AdEvent], data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from([RequestKind.BATCH, RequestKind.STREAM]))
    if kind is RequestKind.BATCH:
        raw = pb.SendAdEventBatchRequest(
            events=events, ack_mode=pb.ACK_MODE_ACCEPTED
        ).SerializeToString()
    else:
        sequence = data.draw(st.integers(0, 2**64 - 1))
        raw = pb.StreamAdEventsRequest(sequence=sequence, events=events).SerializeToString()
    _check(CODECS[name], kind, raw)


@_SETTINGS
@given(st.sampled_from(sorted(CODECS)), library_events())
def test_library_written_single_events(name: str, message: pb.AdEvent) -> None:
    raw = pb.SendAdEventRequest(event=message).SerializeToString()
    _check(CODECS[name], RequestKind.SINGLE, raw)


# -- raw wire bytes --------------------------------------------------------------------


@_SETTINGS
@given(st.sampled_from(sorted(CODECS)), st.data())
def test_raw_wire_requests(name: str, data: st.DataObject) -> None:
    kind, raw = data.draw(any_request())
    _check(CODECS[name], kind, raw)


@_SETTINGS
@given(kinds.flatmap(lambda kind: st.tuples(st.just(kind), raw_request(kind))))
def test_raw_wire_requests_undamaged(case: tuple[RequestKind, bytes]) -> None:
    kind, raw = case
    _check(CODECS["tight"], kind, raw)


# -- edges, each on purpose ---------------------------------------------------------------


def _event(*fields: bytes) -> bytes:
    return delimited(1, b"".join(fields))


_VALID = (
    delimited(2, b"u"),
    delimited(3, b"a"),
    tag(4, 0) + varint(1),
    delimited(5, tag(1, 0) + varint(int(NOW))),
)


@pytest.mark.parametrize("levels", [98, 99, 100, 101, 102])
@pytest.mark.parametrize("where", ["request", "event", "timestamp", "entry"])
def test_nesting_up_to_and_past_the_limit(where: str, levels: int) -> None:
    groups = nested_groups(levels)
    raw = {
        "request": groups,
        "event": _event(*_VALID, groups),
        "timestamp": _event(*_VALID[:3], delimited(5, tag(1, 0) + varint(int(NOW)) + groups)),
        "entry": _event(*_VALID, delimited(12, delimited(1, b"k") + groups)),
    }[where]
    _check(CODECS["defaults"], RequestKind.BATCH, raw)


@pytest.mark.parametrize(
    "raw",
    [
        tag(1, 2) + varint(1, 4) + b"\x00",  # a 5-byte length prefix
        tag(1, 2) + varint(1, 5) + b"\x00",  # 6 bytes: corrupt in this upb
        tag(2, 0, 4) + b"\x01",  # a 5-byte tag
        tag(2, 0, 5) + b"\x01",  # a 6-byte tag
        b"\xf8\xff\xff\xff\x0f\x01",  # the largest 5-byte tag
        b"\xf8\xff\xff\xff\x10\x01",  # past 2^32
        tag(2, 0) + b"\xff" * 9 + b"\x7f",  # bits past 64 ignored
        tag(2, 0) + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x00\x01",  # field number 0
        b"\x0e",  # wire type 6
        b"\x0f",  # wire type 7
        tag(15, 4),  # a stray end-group
        tag(15, 3) + tag(16, 4),  # a mismatched end-group
        _event(tag(15, 4)),  # an end-group inside a message
        _event(
            *_VALID, delimited(12, delimited(1, b"k") + delimited(2, b"v") + tag(3, 0) + b"\x01")
        ),
        _event(*_VALID, delimited(12, delimited(1, b"\xff") + tag(3, 0) + b"\x01")),
        _event(*_VALID, delimited(12, delimited(2, b"v")), delimited(12, delimited(1, b"k"))),
        _event(
            *_VALID, delimited(12, delimited(1, b"k") + delimited(1, b"j") + delimited(2, b"v"))
        ),
        _event(
            *_VALID,
            delimited(12, delimited(1, b"k") + delimited(2, b"1")),
            delimited(12, delimited(1, b"k") + delimited(2, b"2")),
        ),
        _event(
            *_VALID[:3],
            delimited(5, tag(1, 0) + varint(int(NOW))),
            delimited(5, tag(2, 0) + varint(7)),
        ),
        _event(*_VALID[:3], delimited(5, tag(1, 0) + varint(int(NOW)) + tag(2, 0) + varint(-1))),
        _event(
            *_VALID[:3], delimited(5, tag(1, 0) + varint(int(NOW)) + tag(2, 0) + varint(2**31 - 1))
        ),
        _event(*_VALID, delimited(2, b"\xff"), delimited(2, b"u")),  # every occurrence is checked
        _event(*_VALID, delimited(20, b"\xff")),  # unknown bytes are not
        _event(*_VALID, tag(2, 0) + varint(5)),  # a wrong wire type leaves the value
        _event(*_VALID, delimited(4, b"\x02")),  # a packed enum is a wrong wire type
        _event(*_VALID, delimited(1, ("é" * 6 + "x").encode())),  # length counts characters
        _event(*_VALID, delimited(1, ("é" * 6).encode())),
        _event(*_VALID, tag(4, 0) + varint(2**32 + 2)),  # int32 keeps the low 32 bits
        tag(1, 0) + b"\x05" + tag(1, 3) + tag(1, 4),  # events of the wrong wire type
        b"",
    ],
    ids=repr,
)
def test_wire_edges(raw: bytes) -> None:
    for kind in RequestKind:
        _check(CODECS["tight"], kind, raw)


_PAYLOAD_OF_WIRE_TYPE = {
    0: varint(2**32 + 3),
    1: b"\x01\x02\x03\x04\x05\x06\x07\x08",
    2: varint(3) + b"USD",
    5: b"\x01\x02\x03\x04",
}
_WIRE_TYPE_OF_EVENT_FIELD = dict.fromkeys((1, 2, 3, 5, 6, 7, 8, 9, 11, 12), 2) | {
    4: 0,
    10: 0,
}


@pytest.mark.parametrize("wire_type", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("field", sorted(_WIRE_TYPE_OF_EVENT_FIELD))
def test_every_event_field_with_every_wire_type(field: int, wire_type: int) -> None:
    """A known field with another wire type is an unknown field (its value stays)."""
    if wire_type == 3:
        odd = tag(field, 3) + tag(20, 0) + b"\x01" + tag(field, 4)
    else:
        odd = tag(field, wire_type) + _PAYLOAD_OF_WIRE_TYPE[wire_type]
    for raw in (_event(*_VALID, odd), _event(odd, *_VALID), _event(*_VALID) + odd):
        for kind in RequestKind:
            _check(CODECS["tight"], kind, raw)


_TRAILER = delimited(1, b"".join(_VALID))  # another event after the one that overruns


@pytest.mark.parametrize("overrun", [1, 2, 3, 17])
@pytest.mark.parametrize(
    "field",
    ["string", "bad string", "timestamp", "entry", "bad entry", "unknown", "varint"],
)
def test_a_field_running_past_its_event(field: str, overrun: int) -> None:
    """upb reads the field from the buffer (a string is UTF-8 checked), then fails."""
    spill = (b"\xff" if field.startswith("bad") else b"x") * overrun
    body = {
        "string": tag(6, 2) + varint(2 + overrun) + b"ab",
        "bad string": tag(6, 2) + varint(2 + overrun) + b"ab",
        "timestamp": tag(5, 2) + varint(2 + overrun) + tag(1, 0) + b"\x05",
        "entry": tag(12, 2) + varint(3 + overrun) + delimited(1, b"k"),
        "bad entry": tag(12, 2) + varint(2 + overrun) + tag(1, 2) + varint(overrun),
        "unknown": tag(20, 2) + varint(1 + overrun) + b"\xff",
        "varint": tag(10, 0) + b"\x80",
    }[field]
    event = b"".join(_VALID) + body
    raw = tag(1, 2) + varint(len(event)) + event + spill + _TRAILER
    for kind in RequestKind:
        _check(CODECS["tight"], kind, raw)
        _check(CODECS["tight"], kind, raw[: len(raw) - len(_TRAILER) - overrun + 1])


@pytest.mark.parametrize(
    "after",
    [
        varint(3) + delimited(1, b"\xff"),  # an entry whose key is bad UTF-8
        varint(3) + delimited(1, b"k"),
        varint(2) + tag(1, 0) + b"\x05",
        varint(0),
        varint(40),  # past the buffer's end too
    ],
    ids=repr,
)
@pytest.mark.parametrize("field", [5, 6, 12, 20])
def test_a_field_whose_length_prefix_lies_past_its_event(field: int, after: bytes) -> None:
    """The event's last byte is a tag; its length prefix is the next event's bytes.

    upb reads the prefix from the buffer, then refuses a message field that would
    end past its event (Wire format was corrupt) before reading any of it. Found
    by the fuzzer (CI, 2026-12-03): the native pass measured the room left in the
    event as end - p with p already past end, which wrapped around as a size_t,
    and parsed the entry out of the next event's bytes (bad UTF-8 instead).
    """
    event = b"".join(_VALID) + tag(field, 2)
    raw = tag(1, 2) + varint(len(event)) + event + after + _TRAILER
    for kind in RequestKind:
        _check(CODECS["tight"], kind, raw)


def test_strings_that_escape_to_six_times_their_length() -> None:
    """The longest lines there are: every character a \\u00XX escape (room for it all)."""
    control = "".join(chr(n % 32) for n in range(512))
    attributes = {f"{chr(0x1F)}{n:02d}": control for n in range(32)}
    events = [
        pb.AdEvent(
            event_id="\x01" * 128,
            user_id="\x02" * 128,
            ad_id='"' * 128,
            event_type=pb.EVENT_TYPE_CLICK,
            campaign_id="\\" * 128,
            attributes=attributes,
        )
        for _ in range(3)
    ]
    for message in events:
        message.timestamp.FromNanoseconds(int(NOW * 1e9))
    raw = pb.SendAdEventBatchRequest(events=events).SerializeToString()
    assert compare(CODECS["defaults"], RequestKind.BATCH, raw) == "accepted"


@_SETTINGS
@given(st.lists(library_events(), min_size=1, max_size=5), st.text(max_size=40))
def test_any_received_at_is_stored_as_the_reference_stores_it(
    events: list[pb.AdEvent], received_at: str
) -> None:
    """The servicer's received_at never needs escapes, and the native pass copies it
    as it is; any other text still gets the reference's escapes."""
    raw = pb.SendAdEventBatchRequest(events=events).SerializeToString()
    _check(CODECS["defaults"], RequestKind.BATCH, raw, received_at)


def test_single_request_merges_its_event_occurrences() -> None:
    raw = delimited(1, delimited(2, b"u")) + delimited(1, delimited(3, b"a") + tag(4, 0) + b"\x02")
    raw += delimited(1, delimited(5, tag(1, 0) + varint(int(NOW))))
    assert compare(CODECS["defaults"], RequestKind.SINGLE, raw) == "accepted"


def test_too_many_events_are_not_checked() -> None:
    raw = _event(*_VALID) * 13
    assert compare(CODECS["defaults"], RequestKind.BATCH, raw) == "too many events"


def test_the_window_edges_in_floating_point() -> None:
    now = NOW
    for seconds in (int(now) - 100, int(now) + 10, int(now) - 101, int(now) + 11):
        for nanos in (0, 1, 249_999_999, 250_000_000, 250_000_001, 999_999_999, -1):
            raw = _event(
                *_VALID[:3], delimited(5, tag(1, 0) + varint(seconds) + tag(2, 0) + varint(nanos))
            )
            _check(CODECS["tight"], RequestKind.BATCH, raw)
