"""Raw protobuf wire bytes for the codec tests, and the comparison of the two codecs.

The strategies build AdEventService requests field by field, so they can say
what no protobuf library writes: fields in any order and repeated, unknown
fields of every wire type, known fields with the wrong wire type,
non-minimal varints, tags and length prefixes, groups nested to and past
upb's limit of 100, odd map entries, invalid UTF-8 in every string, then
truncations, flipped, inserted and random bytes.

`compare` runs both codecs on one request and asserts the same answer: the
same verdict per event, the same response bytes, counts, per-type counts and
stored bytes (server ids excepted: the native pass's are replayed into the
reference, see `compare`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.helpers.native_build import load_override

load_override()  # a sanitized or mutated build, when the environment names one

from aep.events.codec import Codec, MalformedRequestError, RequestKind  # noqa: E402
from aep.events.codec.native import NativeCodec  # noqa: E402
from aep.events.codec.reference import ReferenceCodec  # noqa: E402
from aep.events.schema import format_epoch  # noqa: E402
from aep.settings import ValidationSettings  # noqa: E402

NOW = float(int(time.time())) + 0.25
RECEIVED_AT = format_epoch(NOW)
MAX_BATCH_EVENTS = 12

# Small bounds, so that random data crosses them; and the defaults.
TIGHT = ValidationSettings(
    max_id_length=6,
    max_attributes=3,
    max_attribute_key_length=3,
    max_attribute_value_length=4,
    max_event_age=100,
    max_clock_skew=10,
)
DEFAULTS = ValidationSettings()
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

# -- wire primitives ---------------------------------------------------------------


def varint(value: int, pad: int = 0) -> bytes:
    """`value` (taken mod 2^64) as a varint, `pad` bytes longer than needed."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    if pad:
        out[-1] |= 0x80
        out.extend(b"\x80" * (pad - 1))
        out.append(0)
    return bytes(out)


def tag(field: int, wire_type: int, pad: int = 0) -> bytes:
    return varint(field << 3 | wire_type, pad)


def delimited(field: int, payload: bytes, pad: int = 0, length_pad: int = 0) -> bytes:
    return tag(field, 2, pad) + varint(len(payload), length_pad) + payload


# Sequences no valid UTF-8 holds: stray continuation, overlongs, surrogates,
# past U+10FFFF, truncated sequences, bytes that never occur.
BAD_UTF8 = [
    b"\x80",
    b"\xbf",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]

pads = st.sampled_from([0, 0, 0, 0, 1, 2, 5, 9])
small_pads = st.sampled_from([0, 0, 0, 0, 1, 3, 4, 5])
texts = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=10),
    st.sampled_from(["", "a", "USD", "EUR", "usd", "\x00", '"\\', "\u2028", "é€😀", "ab\ncd"]),
)


@st.composite
def string_payload(draw: st.DrawFn, bad_chance: bool = True) -> bytes:
    """A string's bytes: mostly valid UTF-8, sometimes with one bad sequence inside."""
    good = draw(texts).encode()
    if bad_chance and draw(st.integers(0, 30)) == 0:
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.sampled_from(BAD_UTF8)) + good[at:]
    return good


interesting_ints = st.one_of(
    st.integers(-3, 6),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**32 + 2, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(-(2**63), 2**64 - 1),
)


@st.composite
def unknown_field(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A field the message does not declare, of any wire type (groups nest)."""
    field = draw(st.sampled_from([13, 14, 15, 19, 100, 2047, 2**29 - 1]))
    wire_type = draw(st.sampled_from([0, 1, 2, 3, 5]))
    if wire_type == 0:
        return tag(field, 0, draw(small_pads)) + varint(draw(interesting_ints), draw(pads))
    if wire_type == 1:
        return tag(field, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return tag(field, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        return delimited(field, draw(st.binary(max_size=6)), length_pad=draw(small_pads))
    inner = b""
    if depth < 3:
        inner = b"".join(draw(st.lists(unknown_field(depth + 1), max_size=2)))
    return tag(field, 3) + inner + tag(field, 4)


def nested_groups(levels: int, field: int = 15) -> bytes:
    return tag(field, 3) * levels + tag(field, 4) * levels


@st.composite
def deep_groups(draw: st.DrawFn, below: int) -> bytes:
    """Groups nested around upb's limit of 100 levels, `below` levels down already."""
    limit = 100 - below
    return nested_groups(draw(st.integers(max(1, limit - 2), limit + 2)))


@st.composite
def wrong_wire_type(draw: st.DrawFn, fields: list[int]) -> bytes:
    """A known field number with a wire type it does not have (upb: an unknown field)."""
    field = draw(st.sampled_from(fields))
    kind = draw(st.sampled_from(["varint", "fixed64", "fixed32", "bytes", "group", "end"]))
    if kind == "varint":
        return tag(field, 0) + varint(draw(interesting_ints))
    if kind == "fixed64":
        return tag(field, 1) + b"\x01" * 8
    if kind == "fixed32":
        return tag(field, 5) + b"\x01" * 4
    if kind == "bytes":
        return delimited(field, draw(st.binary(max_size=4)))
    if kind == "group":
        return tag(field, 3) + tag(field, 4)
    return tag(field, 4)  # a stray end-group: corrupt


# -- AdEvent -----------------------------------------------------------------------

STRING_FIELDS = [1, 2, 3, 6, 7, 8, 9, 11]
_WINDOW_OFFSETS = [-101, -100, -99, -50, 0, 9, 10, 11, -(7 * 86400) - 1, -(7 * 86400), 299, 301]


@st.composite
def timestamp_payload(draw: st.DrawFn) -> bytes:
    items = []
    if draw(st.booleans()) or True:
        seconds = int(NOW) + draw(st.sampled_from(_WINDOW_OFFSETS))
        if draw(st.integers(0, 9)) == 0:
            seconds = draw(interesting_ints)
        items.append(tag(1, 0) + varint(seconds, draw(pads)))
    if draw(st.booleans()):
        nanos = draw(
            st.one_of(
                st.integers(0, 999_999_999),
                st.sampled_from([-1, -999, -1000, -1001, 10**9, 2**31 - 1, -(2**31), 2**32 + 7]),
            )
        )
        items.append(tag(2, 0) + varint(nanos, draw(pads)))
    if draw(st.integers(0, 5)) == 0:
        items.append(draw(unknown_field()))
    items = draw(st.permutations(items))
    return b"".join(items)


@st.composite
def attribute_entry(draw: st.DrawFn) -> bytes:
    items = []
    shape = draw(st.integers(0, 12))
    if shape != 1:
        items.append(delimited(1, draw(string_payload()), length_pad=draw(small_pads)))
    if shape != 2:
        items.append(delimited(2, draw(string_payload()), length_pad=draw(small_pads)))
    if shape == 3:  # a repeated key or value: the last wins
        items.append(delimited(draw(st.sampled_from([1, 2])), draw(string_payload())))
    if shape == 4:  # an entry holding another field is dropped from the map
        items.append(draw(unknown_field()))
    if shape == 5:
        items.append(draw(wrong_wire_type([1, 2])))
    if shape == 6:  # another field that holds bad UTF-8: not checked, entry dropped
        items.append(delimited(3, b"\xff"))
    items = draw(st.permutations(items))
    return b"".join(items)


@st.composite
def event_field(draw: st.DrawFn, below: int) -> bytes:
    """One field of an AdEvent, `below` levels below the request."""
    choice = draw(st.integers(0, 40))
    pad = draw(small_pads)
    if choice < 16:
        field = draw(st.sampled_from(STRING_FIELDS))
        return delimited(field, draw(string_payload()), pad=pad, length_pad=draw(small_pads))
    if choice < 20:
        return tag(4, 0, pad) + varint(draw(interesting_ints), draw(pads))
    if choice < 25:
        return delimited(5, draw(timestamp_payload()), pad=pad, length_pad=draw(small_pads))
    if choice < 27:
        return tag(10, 0, pad) + varint(draw(interesting_ints), draw(pads))
    if choice < 33:
        return delimited(12, draw(attribute_entry()), pad=pad, length_pad=draw(small_pads))
    if choice < 36:
        return draw(unknown_field())
    if choice < 38:
        return draw(wrong_wire_type([1, 2, 3, 4, 5, 10, 11, 12]))
    if choice < 39:
        return delimited(5, draw(deep_groups(below + 1)))
    if choice < 40:
        return delimited(12, delimited(1, b"k") + draw(deep_groups(below + 1)))
    return draw(deep_groups(below))


@st.composite
def plausible_event(draw: st.DrawFn) -> bytes:
    """An event with the required fields, mostly valid, in any order."""
    fields = [
        delimited(2, draw(st.sampled_from([b"u", b"user-1", b"\xc3\xa9"]))),
        delimited(3, draw(st.sampled_from([b"a", b"ad-12345"]))),
        tag(4, 0) + varint(draw(st.integers(0, 4))),
        delimited(5, tag(1, 0) + varint(int(NOW) + draw(st.integers(-120, 20)))),
    ]
    if draw(st.booleans()):
        fields.append(delimited(1, draw(st.sampled_from([b"", b"e1", b"e-12345678"]))))
    if draw(st.booleans()):
        fields.append(tag(10, 0) + varint(draw(st.integers(-2, 5))))
        fields.append(delimited(11, draw(st.sampled_from([b"USD", b"usd", b"US"]))))
    fields.extend(draw(st.lists(event_field(1), max_size=4)))
    return b"".join(draw(st.permutations(fields)))


@st.composite
def event_payload(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(plausible_event())
    return b"".join(draw(st.lists(event_field(1), max_size=8)))


# -- requests ----------------------------------------------------------------------

kinds = st.sampled_from(list(RequestKind))


@st.composite
def raw_request(draw: st.DrawFn, kind: RequestKind) -> bytes:
    events_field = 2 if kind is RequestKind.STREAM else 1
    ack_field = 3 if kind is RequestKind.STREAM else 2
    declared = [events_field, ack_field] + ([1] if kind is RequestKind.STREAM else [])
    items = [
        delimited(events_field, draw(event_payload()), length_pad=draw(small_pads))
        for _ in range(draw(st.integers(0, 4 if kind is RequestKind.SINGLE else 14)))
    ]
    if draw(st.booleans()):
        items.append(tag(ack_field, 0, draw(small_pads)) + varint(draw(interesting_ints)))
    if kind is RequestKind.STREAM and draw(st.booleans()):
        items.append(tag(1, 0) + varint(draw(interesting_ints), draw(pads)))
    extra = draw(st.integers(0, 12))
    if extra == 0:
        items.append(draw(unknown_field()))
    elif extra == 1:
        items.append(draw(wrong_wire_type(declared)))
    elif extra == 2:
        items.append(draw(deep_groups(0)))
    return b"".join(draw(st.permutations(items)))


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """raw, often unchanged, else truncated, with flipped, inserted or deleted bytes."""
    how = draw(st.integers(0, 9))
    if how < 5 or not raw:
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if how == 5:
        return raw[:at]
    if how == 6:
        return raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1 :]
    if how == 7:
        return raw[:at] + draw(st.binary(min_size=1, max_size=3)) + raw[at:]
    if how == 8:
        return raw[:at] + raw[at + 1 :]
    return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]


@st.composite
def any_request(draw: st.DrawFn) -> tuple[RequestKind, bytes]:
    kind = draw(kinds)
    if draw(st.integers(0, 15)) == 0:
        return kind, draw(st.binary(max_size=64))
    return kind, draw(damaged(draw(raw_request(kind))))


# -- the comparison ------------------------------------------------------------------


@dataclass
class CodecPair:
    native: NativeCodec
    validation: ValidationSettings


def pair(validation: ValidationSettings) -> CodecPair:
    return CodecPair(NativeCodec(validation, MAX_BATCH_EVENTS), validation)


def _decode(
    codec: Codec, kind: RequestKind, raw: bytes, now: float = NOW, received_at: str | None = None
) -> object:
    try:
        return codec.decode(
            kind, raw, now, format_epoch(now) if received_at is None else received_at
        )
    except MalformedRequestError as error:
        return error


def compare(
    codecs: CodecPair,
    kind: RequestKind,
    raw: bytes,
    now: float = NOW,
    received_at: str | None = None,
) -> str:
    """Both codecs on one request; asserts the same answer. Returns the outcome's name.

    `received_at` is stored as given (default: format_epoch(now), as the servicer's).

    Server ids are random: the reference runs once with placeholder ids (to see
    which stored forms get one), then again with the ids the native pass made.
    """
    native = _decode(codecs.native, kind, raw, now, received_at)
    placeholders: list[str] = []

    def placeholder_ids(count: int) -> list[str]:
        made = ["".join(["server-id-", str(len(placeholders))]) for _ in range(count)]
        placeholders.extend(made)
        return made

    first = _decode(
        ReferenceCodec(codecs.validation, MAX_BATCH_EVENTS, new_ids=placeholder_ids),
        kind,
        raw,
        now,
        received_at,
    )
    if isinstance(first, MalformedRequestError) or isinstance(native, MalformedRequestError):
        assert type(native) is type(first), (native, first)
        assert str(native) == str(first)
        return "malformed"
    from aep.events.codec import DecodedRequest

    assert isinstance(native, DecodedRequest) and isinstance(first, DecodedRequest)
    made = {id(made) for made in placeholders}
    server_positions = [
        index
        for index, record in enumerate(first.verdicts.records)
        if id(record["event_id"]) in made
    ]
    native_ids = native.block().event_ids
    assert len(native_ids) == len(first.verdicts.records), (native_ids, first.verdicts)
    server_ids = [native_ids[index] for index in server_positions]
    for server_id in server_ids:
        assert UUID7.fullmatch(server_id), server_id
    assert server_ids == sorted(server_ids) and len(set(server_ids)) == len(server_ids)
    replay = iter(server_ids)
    reference = _decode(
        ReferenceCodec(
            codecs.validation,
            MAX_BATCH_EVENTS,
            new_ids=lambda count: [next(replay) for _ in range(count)],
        ),
        kind,
        raw,
        now,
        received_at,
    )
    assert isinstance(reference, DecodedRequest)
    assert native.count == reference.count
    assert native.has_event == reference.has_event
    assert native.ack_mode == reference.ack_mode
    assert native.sequence == reference.sequence
    assert list(native.received_by_type) == list(reference.received_by_type)
    assert native.verdicts.rejected == reference.verdicts.rejected
    assert native.verdicts.records == reference.verdicts.records
    for record, expected in zip(native.verdicts.records, reference.verdicts.records, strict=True):
        assert list(record) == list(expected)  # key order too: it is the stored order
        assert list(record["attributes"]) == list(expected["attributes"])
    if kind is not RequestKind.SINGLE:  # SendAdEventResponse is the servicer's
        for ack_mode in (0, 1, 3):
            assert native.response(ack_mode) == reference.response(ack_mode)
    native_block, reference_block = native.block(), reference.block()
    assert native_block.lines == reference_block.lines
    assert list(native_block.ends) == list(reference_block.ends)
    assert native_block.event_ids == reference_block.event_ids
    assert native_block.event_types == reference_block.event_types
    if native.count > MAX_BATCH_EVENTS:
        return "too many events"
    if native.verdicts.rejected and native.verdicts.records:
        return "mixed"
    if native.verdicts.rejected:
        return "rejected"
    return "accepted" if native.verdicts.records else "no events"
