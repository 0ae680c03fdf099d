"""The native codec: one C pass per request (codec_core.c), behind the codec interface.

The pass decides every verdict itself. For the rare rejected event it asks
the Python rules for the reason's wording (EventValidator.problem on that
event's bytes), so a reason reads the same whichever codec runs.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from aep.events.block import EventBlock
from aep.events.codec import (
    REQUEST_TYPES,
    DecodedRequest,
    MalformedRequestError,
    RequestKind,
    _native,
)
from aep.events.validation import EventValidator, Verdicts
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings

_FULL_NAMES = {kind: message.DESCRIPTOR.full_name for kind, message in REQUEST_TYPES.items()}
_NO_EVENTS = EventBlock(b"", [], [], b"")


class NativeCodec:
    name = "native"

    def __init__(
        self, validation: ValidationSettings, max_batch_events: int, *, records: bool = True
    ) -> None:
        """records: build the stored forms as dicts too (the pipeline of today takes them)."""
        self._validator = EventValidator(validation)
        self._max_batch_events = max_batch_events
        self._pass = _native.Codec(
            validation.max_id_length,
            validation.max_attributes,
            validation.max_attribute_key_length,
            validation.max_attribute_value_length,
            validation.max_event_age,
            validation.max_clock_skew,
            max_batch_events,
            self._reason,
            records,
        )

    def _reason(self, event: bytes, now: float) -> str:
        try:
            problem = self._validator.problem(pb.AdEvent.FromString(event), now)
        except DecodeError:  # the pass took it as valid protobuf: a disagreement with upb
            problem = None
        return problem or "event: rejected"

    def decode(self, kind: RequestKind, raw: bytes, now: float, received_at: str) -> DecodedRequest:
        try:
            (
                count,
                has_event,
                ack_mode,
                sequence,
                by_type,
                records,
                rejected,
                response,
                lines,
                line_ends,
                event_types,
            ) = self._pass.decode(kind, raw, now, received_at)
        except _native.WireError as error:
            raise MalformedRequestError(
                f"Error parsing message with type '{_FULL_NAMES[kind]}': {error}"
            ) from None
        if count > self._max_batch_events:
            return DecodedRequest(
                kind,
                count=count,
                has_event=has_event,
                ack_mode=ack_mode,
                sequence=sequence,
                received_by_type=by_type,
                verdicts=Verdicts([], []),
                response=b"",
                block=_NO_EVENTS,
            )
        ends = memoryview(line_ends).cast("Q") if line_ends else []
        return DecodedRequest(
            kind,
            count=count,
            has_event=has_event,
            ack_mode=ack_mode,
            sequence=sequence,
            received_by_type=by_type,
            verdicts=Verdicts(records if records is not None else [], rejected),
            response=response,
            block=EventBlock(lines, ends, None, event_types),
        )
