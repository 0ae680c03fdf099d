"""The codec interface: selection by server.codec, the native build, its server ids."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

import pytest

from aep.events.codec import (
    CodecUnavailableError,
    RequestKind,
    create_codec,
    native_codec_problem,
)
from aep.events.event_types import EVENT_TYPE_COUNT
from aep.events.ids import EventIdGenerator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import CodecChoice, ConfigError, load_settings
from tests.helpers.codec_wire import DEFAULTS, NOW, RECEIVED_AT, UUID7
from tests.helpers.native_build import OVERRIDE_ENV, source_digest

native = pytest.mark.skipif(
    native_codec_problem() is not None, reason=f"native codec not built: {native_codec_problem()}"
)


def test_python_is_the_reference() -> None:
    assert create_codec(CodecChoice.PYTHON, DEFAULTS, 10).name == "python"


@native
def test_auto_and_native_run_the_native_pass_when_it_is_built() -> None:
    assert create_codec(CodecChoice.AUTO, DEFAULTS, 10).name == "native"
    assert create_codec(CodecChoice.NATIVE, DEFAULTS, 10).name == "native"


def test_without_the_build_auto_warns_and_native_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        "aep.events.codec.native_codec_problem", lambda: "No module named '_native'"
    )
    with caplog.at_level(logging.WARNING, logger="aep.events.codec"):
        assert create_codec(CodecChoice.AUTO, DEFAULTS, 10).name == "python"
    assert "native codec is not built" in caplog.text
    with pytest.raises(CodecUnavailableError, match=r"server\.codec=native"):
        create_codec(CodecChoice.NATIVE, DEFAULTS, 10)


def test_a_bad_codec_setting_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"AEP_SERVER_CODEC": "fast"})
    print(raised.value)
    assert "server.codec" in str(raised.value)
    assert "AEP_SERVER_CODEC" in str(raised.value)
    chosen = load_settings(environ={"AEP_SERVER_CODEC": "python"}).server.codec
    assert chosen is CodecChoice.PYTHON
    assert load_settings(environ={}).server.codec is CodecChoice.AUTO


@native
def test_the_build_is_of_these_sources() -> None:
    """A stale build would make every differential test test something else."""
    from aep.events.codec import _native

    assert source_digest() == _native.SOURCE_SHA256, (
        "the native codec was built from other sources: run `pip install -e .` (make deps)"
        + (f" ({OVERRIDE_ENV} is set)" if OVERRIDE_ENV in os.environ else "")
    )


@native
def test_type_slots_match_the_event_types() -> None:
    from aep.events.codec import _native

    assert _native.TYPE_SLOTS == EVENT_TYPE_COUNT


@native
def test_server_ids_are_uuid7_increasing_and_near_now() -> None:
    codec = create_codec(CodecChoice.NATIVE, DEFAULTS, 1000)
    event = pb.AdEvent(user_id="u", ad_id="a", event_type=pb.EVENT_TYPE_CLICK)
    event.timestamp.FromNanoseconds(int(NOW * 1e9))
    raw = pb.SendAdEventBatchRequest(events=[event] * 1000).SerializeToString()
    ids: list[str] = []
    before_ms = time.time_ns() // 1_000_000
    for _ in range(5):
        ids += codec.decode(RequestKind.BATCH, raw, NOW, RECEIVED_AT).block().event_ids
    after_ms = time.time_ns() // 1_000_000
    assert all(UUID7.fullmatch(value) for value in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first_ms = int(ids[0].replace("-", "")[:12], 16)
    assert before_ms <= first_ms <= after_ms


@native
def test_a_requests_server_ids_count_up_by_one_like_a_python_block() -> None:
    """One clock read per request, as EventIdGenerator.new_ids: its ids share a
    millisecond (or carry into the next) and count up by one. Reading the clock
    per id made them jump to a fresh random wherever a millisecond ended."""
    codec = create_codec(CodecChoice.NATIVE, DEFAULTS, 1000)
    event = pb.AdEvent(user_id="u", ad_id="a", event_type=pb.EVENT_TYPE_CLICK)
    event.timestamp.FromNanoseconds(int(NOW * 1e9))
    raw = pb.SendAdEventBatchRequest(events=[event] * 1000).SerializeToString()
    for _ in range(10):  # ~0.3 ms each: the clock ticks inside several of them
        ids = codec.decode(RequestKind.BATCH, raw, NOW, RECEIVED_AT).block().event_ids
        first = uuid.UUID(ids[0]).int
        assert [uuid.UUID(event_id).int - first for event_id in ids] == list(range(1000))


@native
@pytest.mark.parametrize(
    "last_random", [0, 5, (1 << 40) - 1, (1 << 62) - 1, (1 << 73) - 2, (1 << 74) - 1]
)
def test_native_ids_follow_the_python_generator(last_random: int) -> None:
    """Same state, same next ids (counting up within a millisecond, into the next one)."""
    from aep.events.codec import _native

    future_ms = time.time_ns() // 1_000_000 + 3_600_000  # the clock stays behind it
    native_pass = _native.Codec(1, 1, 1, 1, 1.0, 1.0, 1, lambda event, now: "")
    native_pass._set_id_state(future_ms, last_random)
    python = EventIdGenerator()
    python._start_millisecond(future_ms)
    python._last_random = last_random
    for _ in range(3):
        assert native_pass._next_id() == python.new_id()


@native
def test_a_decode_from_inside_a_decode_is_refused_and_the_outer_one_goes_on() -> None:
    """The lines are built in the bytes object the pass returns; a reentrant call
    (from the reason callback) must neither use nor free the outer call's."""
    from aep.events.codec import _native

    inner_errors: list[str] = []

    def reason(event: bytes, now: float) -> str:
        try:
            codec_pass.decode(1, raw, now, RECEIVED_AT)
        except RuntimeError as error:
            inner_errors.append(str(error))
        return "rejected"

    codec_pass = _native.Codec(128, 50, 64, 256, 86400.0, 300.0, 1000, reason, False)
    good = [
        pb.AdEvent(event_id=f"e{n}", user_id="u" * 50, ad_id="a", event_type=pb.EVENT_TYPE_CLICK)
        for n in range(200)
    ]
    for event in good:
        event.timestamp.FromNanoseconds(int(NOW * 1e9))
    bad = pb.AdEvent(event_id="bad", user_id="u")  # no ad_id: rejected, the callback runs
    raw = pb.SendAdEventBatchRequest(events=[*good[:100], bad, *good[100:]]).SerializeToString()
    lines = codec_pass.decode(1, raw, NOW, RECEIVED_AT)[8]
    assert inner_errors == ["Codec.decode is not reentrant"]
    plain = _native.Codec(128, 50, 64, 256, 86400.0, 300.0, 1000, lambda event, now: "", False)
    assert lines == plain.decode(1, raw, NOW, RECEIVED_AT)[8]
    assert lines.count(b"\n") == 200


def test_malformed_bytes_name_the_message_type() -> None:
    for choice in (CodecChoice.PYTHON, CodecChoice.AUTO):
        codec = create_codec(choice, DEFAULTS, 10)
        with pytest.raises(ValueError) as raised:
            codec.decode(RequestKind.STREAM, b"\x0e", NOW, RECEIVED_AT)
        assert re.fullmatch(
            r"Error parsing message with type 'adevents\.v1\.StreamAdEventsRequest': "
            r"Wire format was corrupt",
            str(raised.value),
        ), str(raised.value)
