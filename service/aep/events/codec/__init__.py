"""The codec of AdEventService requests: raw request bytes in, checked events and the answer out.

Two implementations behind one interface (as uvicorn's httptools parser with
the pure-Python h11 beside it), chosen by `server.codec`:

- `python` (reference.py): the protobuf runtime's decoder, the rules of
  aep.events.validation, the hand-serialised responses and orjson's JSON
  Lines. Readable; it is the specification.
- `native` (native.py over _native.c / codec_core.c): one C pass over the
  wire format that does all of it. Differential tests hold it to the
  reference's verdicts and bytes (tests/unit/test_codec_differential.py).
- `auto`: native when it is built, else python with a warning.

`decode` answers one request. What it returns (DecodedRequest) is what the
servicer needs: the request's fields, the per-event verdicts (the rejected
events and their reasons), the serialised response without its ack_mode, and
the valid events encoded once as a block of JSON Lines (EventBlock), which
the pipeline carries and the stores write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Protocol

from google.protobuf.message import Message

from aep.events.block import EventBlock
from aep.events.validation import Verdicts
from aep.events.varint import encode_varint
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import CodecChoice, ValidationSettings

logger = logging.getLogger(__name__)


class RequestKind(IntEnum):
    """The request messages the codec reads (the numbers are the native pass's)."""

    SINGLE = 0  # SendAdEventRequest
    BATCH = 1  # SendAdEventBatchRequest
    STREAM = 2  # StreamAdEventsRequest


REQUEST_TYPES: dict[
    RequestKind,
    type[pb.SendAdEventRequest | pb.SendAdEventBatchRequest | pb.StreamAdEventsRequest],
] = {
    RequestKind.SINGLE: pb.SendAdEventRequest,
    RequestKind.BATCH: pb.SendAdEventBatchRequest,
    RequestKind.STREAM: pb.StreamAdEventsRequest,
}
KIND_OF_REQUEST_TYPE: dict[type[Message], RequestKind] = {
    message: kind for kind, message in REQUEST_TYPES.items()
}

_VARINT = 0
_ACK_MODE_KEYS = {
    RequestKind.BATCH: encode_varint(
        pb.SendAdEventBatchResponse.DESCRIPTOR.fields_by_name["ack_mode"].number << 3 | _VARINT
    ),
    RequestKind.STREAM: encode_varint(
        pb.StreamAdEventsResponse.DESCRIPTOR.fields_by_name["ack_mode"].number << 3 | _VARINT
    ),
}


class MalformedRequestError(ValueError):
    """The bytes are not a valid request message; the text is the protobuf runtime's."""


class CodecUnavailableError(RuntimeError):
    """server.codec=native, and the native codec is not built (or does not load)."""


class DecodedRequest:
    """One request as the codec read it (see the module docstring)."""

    __slots__ = (
        "_block",
        "_make_block",
        "_response",
        "ack_mode",
        "count",
        "has_event",
        "kind",
        "received_by_type",
        "sequence",
        "verdicts",
    )

    def __init__(
        self,
        kind: RequestKind,
        *,
        count: int,
        has_event: bool,
        ack_mode: int,
        sequence: int,
        received_by_type: Sequence[int],
        verdicts: Verdicts,
        response: bytes,
        block: EventBlock | Callable[[], EventBlock],
    ) -> None:
        self.kind = kind
        self.count = count  # events in the request (SendAdEventRequest: 1 if it has one)
        self.has_event = has_event  # SendAdEventRequest only
        self.ack_mode = ack_mode  # as requested (a signed int32: open enum)
        self.sequence = sequence  # StreamAdEventsRequest only
        # Every event of the request by its EventType number (0 .. EVENT_TYPE_COUNT - 1).
        self.received_by_type = received_by_type
        self.verdicts = verdicts
        self._response = response
        if isinstance(block, EventBlock):
            self._block: EventBlock | None = block
            self._make_block: Callable[[], EventBlock] | None = None
        else:
            self._block = None
            self._make_block = block

    def response(self, ack_mode: int) -> bytes:
        """The serialised SendAdEventBatchResponse / StreamAdEventsResponse."""
        if not ack_mode:
            return self._response
        return self._response + _ACK_MODE_KEYS[self.kind] + encode_varint(ack_mode)

    def block(self) -> EventBlock:
        if self._block is None:
            assert self._make_block is not None
            self._block = self._make_block()
        return self._block


class Codec(Protocol):
    """What both implementations offer."""

    name: str

    def decode(self, kind: RequestKind, raw: bytes, now: float, received_at: str) -> DecodedRequest:
        """Read, check and encode one request; raises MalformedRequestError.

        `now` is the clock the timestamp window is checked against,
        `received_at` the stored form's received_at. Past `max_batch_events`
        events nothing is checked: the request is refused anyway.
        """
        ...


def native_codec_problem() -> str | None:
    """None when the native codec loads, else why not."""
    try:
        from aep.events.codec import _native  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


def create_codec(
    choice: CodecChoice, validation: ValidationSettings, max_batch_events: int
) -> Codec:
    """The codec `server.codec` asks for; raises CodecUnavailableError for native without it."""
    from aep.events.codec.reference import ReferenceCodec

    if choice is CodecChoice.PYTHON:
        return ReferenceCodec(validation, max_batch_events)
    problem = native_codec_problem()
    if problem is not None:
        if choice is CodecChoice.NATIVE:
            raise CodecUnavailableError(
                f"server.codec=native, but the native codec is not built ({problem}); "
                "install with a C compiler, or set server.codec to auto or python"
            )
        logger.warning(
            "the native codec is not built; running the Python reference codec "
            "(several times the CPU per event)",
            extra={"error": problem},
        )
        return ReferenceCodec(validation, max_batch_events)
    from aep.events.codec.native import NativeCodec

    # The pipeline carries the block: no stored form as a dict per event.
    return NativeCodec(validation, max_batch_events, records=False)
