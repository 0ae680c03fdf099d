"""Batch responses and stream acks, serialised by hand on the hot path.

A batch answers with one EventResult per event. Building those as protobuf
messages is a large part of a batch's cost; almost all results are "accepted,
with this id", and for those the bytes are a cached prefix per index plus the
id. The other results (rejections, very long ids) are serialised by protobuf itself.
A property test holds the output byte for byte to protobuf's own
serialisation (tests/unit/test_responses.py).
"""

from __future__ import annotations

from aep.events.validation import Verdicts
from aep.events.varint import encode_varint
from aep.proto.adevents.v1 import ad_events_pb2 as pb

_LENGTH_DELIMITED = 2
_VARINT = 0


def _tag(message: type[pb.SendAdEventBatchResponse | pb.StreamAdEventsResponse], name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


def _key(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


_RESULT = pb.EventResult.DESCRIPTOR.fields_by_name
_INDEX_KEY = _key(_RESULT["index"].number, _VARINT)
_ID_KEY = _key(_RESULT["event_id"].number, _LENGTH_DELIMITED)
_ACCEPTED_TAIL = _key(_RESULT["status"].number, _VARINT) + encode_varint(pb.EVENT_STATUS_ACCEPTED)
_SERVER_ID_BYTES = 36  # a UUIDv7 string, the commonest id


# Prefixes are cached for the first indexes only, so the cache stays small;
# results further into a (configurably) huge request are serialised one by one.
_MAX_CACHED_INDEX = 10_000


class _AcceptedPrefixes:
    """Per index: the bytes of an accepted result up to its 36-byte id.

    Grows to the largest request seen, up to _MAX_CACHED_INDEX.
    """

    def __init__(self, results_key: bytes) -> None:
        self._results_key = results_key
        self.prefixes: list[bytes] = []

    def up_to(self, count: int) -> list[bytes]:
        prefixes = self.prefixes
        for index in range(len(prefixes), min(count, _MAX_CACHED_INDEX)):
            # proto3 leaves a zero index out.
            index_field = _INDEX_KEY + encode_varint(index) if index else b""
            head = index_field + _ID_KEY + encode_varint(_SERVER_ID_BYTES)
            size = len(head) + _SERVER_ID_BYTES + len(_ACCEPTED_TAIL)
            prefixes.append(self._results_key + encode_varint(size) + head)
        return prefixes


class _ResultsEncoder:
    """The `results` field of one response type, plus its counts and ack mode."""

    def __init__(
        self, message: type[pb.SendAdEventBatchResponse | pb.StreamAdEventsResponse]
    ) -> None:
        self._results_key = _key(_tag(message, "results"), _LENGTH_DELIMITED)
        self._accepted_key = _key(_tag(message, "accepted_count"), _VARINT)
        self._rejected_key = _key(_tag(message, "rejected_count"), _VARINT)
        self._ack_mode_key = _key(_tag(message, "ack_mode"), _VARINT)
        self._prefixes = _AcceptedPrefixes(self._results_key)

    def encode(self, verdicts: Verdicts, count: int, ack_mode: int) -> bytes:
        accepted = len(verdicts.records)
        rejected = count - accepted
        parts = []
        if accepted:
            parts.append(self._accepted_key + encode_varint(accepted))
        if rejected:
            parts.append(self._rejected_key + encode_varint(rejected))
        if verdicts.rejected:
            parts.append(self._mixed_results(verdicts))
        else:
            parts.append(self._accepted_results(verdicts))
        if ack_mode:
            parts.append(self._ack_mode_key + encode_varint(ack_mode))
        return b"".join(parts)

    def _accepted_results(self, verdicts: Verdicts) -> bytes:
        """Every event accepted: result i is records[i]."""
        prefixes = self._prefixes.up_to(len(verdicts.records))
        cached = len(prefixes)
        tail = _ACCEPTED_TAIL
        ids = [record["event_id"].encode() for record in verdicts.records]
        return b"".join(
            [
                prefixes[index] + event_id + tail
                if len(event_id) == _SERVER_ID_BYTES and index < cached
                else self._result(index, event_id, pb.EVENT_STATUS_ACCEPTED, "")
                for index, event_id in enumerate(ids)
            ]
        )

    def _mixed_results(self, verdicts: Verdicts) -> bytes:
        """Some events rejected: merge both lists back into request order."""
        parts = []
        rejected = iter(verdicts.rejected)
        next_rejected = next(rejected, None)
        records = iter(verdicts.records)
        index = 0
        total = len(verdicts.records) + len(verdicts.rejected)
        while index < total:
            if next_rejected is not None and next_rejected[0] == index:
                _, event_id, reason = next_rejected
                parts.append(
                    self._result(index, event_id.encode(), pb.EVENT_STATUS_REJECTED, reason)
                )
                next_rejected = next(rejected, None)
            else:
                event_id_bytes = next(records)["event_id"].encode()
                parts.append(self._result(index, event_id_bytes, pb.EVENT_STATUS_ACCEPTED, ""))
            index += 1
        return b"".join(parts)

    def _result(
        self, index: int, event_id: bytes, status: pb.EventStatus.ValueType, reason: str
    ) -> bytes:
        body = pb.EventResult(
            index=index, event_id=event_id.decode(), status=status, reason=reason
        ).SerializeToString()
        return self._results_key + encode_varint(len(body)) + body


_BATCH = _ResultsEncoder(pb.SendAdEventBatchResponse)
_STREAM = _ResultsEncoder(pb.StreamAdEventsResponse)
_SEQUENCE_KEY = _key(_tag(pb.StreamAdEventsResponse, "sequence"), _VARINT)


def batch_response(verdicts: Verdicts, count: int, ack_mode: int) -> bytes:
    """A serialised SendAdEventBatchResponse for a request of `count` events."""
    return _BATCH.encode(verdicts, count, ack_mode)


def stream_ack(sequence: int, verdicts: Verdicts, count: int, ack_mode: int) -> bytes:
    """A serialised StreamAdEventsResponse answering chunk `sequence`."""
    head = _SEQUENCE_KEY + encode_varint(sequence) if sequence else b""
    return head + _STREAM.encode(verdicts, count, ack_mode)
