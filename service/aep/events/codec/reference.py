"""The reference codec: the specification of what a request's answer is.

Readable on purpose: the protobuf runtime decodes the request,
EventValidator.accept_all checks the events and builds their stored forms
(ids assigned), aep.ingest.responses serialises the per-event results, and
aep.events.json_lines (orjson) encodes the block. The native pass must give the
same bytes for every input (tests/unit/test_codec_differential.py).
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from aep.events.block import EventBlock
from aep.events.codec import DecodedRequest, MalformedRequestError, RequestKind
from aep.events.event_types import EVENT_TYPE_COUNT
from aep.events.ids import EventIdGenerator
from aep.events.validation import EventValidator, Verdicts
from aep.ingest.responses import batch_response, stream_ack
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings


class ReferenceCodec:
    name = "python"

    def __init__(
        self,
        validation: ValidationSettings,
        max_batch_events: int,
        *,
        new_ids: Callable[[int], list[str]] | None = None,
    ) -> None:
        self._validator = EventValidator(validation)
        self._max_batch_events = max_batch_events
        # new_ids: for tests, which replay another codec's server ids.
        self._new_ids = new_ids or EventIdGenerator().new_ids

    def decode(self, kind: RequestKind, raw: bytes, now: float, received_at: str) -> DecodedRequest:
        sequence = 0
        has_event = False
        try:
            if kind is RequestKind.SINGLE:
                single = pb.SendAdEventRequest.FromString(raw)
                has_event = single.HasField("event")
                events = [single.event] if has_event else []
                ack_mode = int(single.ack_mode)
            elif kind is RequestKind.BATCH:
                batch = pb.SendAdEventBatchRequest.FromString(raw)
                events = list(batch.events)
                ack_mode = int(batch.ack_mode)
            else:
                chunk = pb.StreamAdEventsRequest.FromString(raw)
                events = list(chunk.events)
                ack_mode = int(chunk.ack_mode)
                sequence = chunk.sequence
        except DecodeError as error:
            raise MalformedRequestError(str(error)) from error
        count = len(events)
        by_type = [0] * EVENT_TYPE_COUNT
        verdicts = Verdicts([], [])
        response = b""
        if count > self._max_batch_events:
            for event in events:
                if 0 <= event.event_type < EVENT_TYPE_COUNT:
                    by_type[event.event_type] += 1
        else:
            verdicts = self._validator.accept_all(events, now, received_at, self._new_ids, by_type)
            if kind is RequestKind.BATCH:
                response = batch_response(verdicts, count, 0)
            elif kind is RequestKind.STREAM:
                response = stream_ack(sequence, verdicts, count, 0)
        records = verdicts.records
        return DecodedRequest(
            kind,
            count=count,
            has_event=has_event,
            ack_mode=ack_mode,
            sequence=sequence,
            received_by_type=by_type,
            verdicts=verdicts,
            response=response,
            block=lambda: EventBlock.of_records(records),
        )
