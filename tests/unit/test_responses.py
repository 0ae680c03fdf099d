"""The hand-serialised responses are byte for byte what protobuf would write."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aep.events.validation import Verdicts
from aep.ingest.responses import batch_response, stream_ack
from aep.proto.adevents.v1 import ad_events_pb2 as pb

event_ids = st.one_of(
    st.uuids().map(str),  # 36 bytes: the cached path
    st.text(max_size=200),  # any other length, and non-ASCII
)


@st.composite
def verdicts(draw: st.DrawFn) -> tuple[Verdicts, list[pb.EventResult]]:
    """Verdicts for a request, and the results protobuf would carry for them."""
    outcomes = draw(
        st.lists(st.tuples(st.booleans(), event_ids, st.text(max_size=40)), max_size=300)
    )
    records, rejected, results = [], [], []
    for index, (accepted, event_id, reason) in enumerate(outcomes):
        if accepted:
            records.append({"event_id": event_id})
            status = pb.EVENT_STATUS_ACCEPTED
            reason = ""
        else:
            rejected.append((index, event_id, reason))
            status = pb.EVENT_STATUS_REJECTED
        results.append(pb.EventResult(index=index, event_id=event_id, status=status, reason=reason))
    return Verdicts(records, rejected), results


ack_modes = st.sampled_from(list(pb.AckMode.values()))


@settings(max_examples=300, deadline=None)
@given(verdicts(), ack_modes)
def test_batch_response_bytes_equal_protobufs(
    case: tuple[Verdicts, list[pb.EventResult]], ack_mode: pb.AckMode.ValueType
) -> None:
    outcome, results = case
    expected = pb.SendAdEventBatchResponse(
        accepted_count=len(outcome.records),
        rejected_count=len(outcome.rejected),
        results=results,
        ack_mode=ack_mode,
    )
    assert batch_response(outcome, len(results), ack_mode) == expected.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(verdicts(), ack_modes, st.integers(min_value=0, max_value=2**64 - 1))
def test_stream_ack_bytes_equal_protobufs(
    case: tuple[Verdicts, list[pb.EventResult]], ack_mode: pb.AckMode.ValueType, sequence: int
) -> None:
    outcome, results = case
    expected = pb.StreamAdEventsResponse(
        sequence=sequence,
        accepted_count=len(outcome.records),
        rejected_count=len(outcome.rejected),
        results=results,
        ack_mode=ack_mode,
    )
    assert stream_ack(sequence, outcome, len(results), ack_mode) == expected.SerializeToString()


def test_a_batch_of_server_ids_takes_the_cached_path() -> None:
    records = [{"event_id": f"0192f3a4-5b6c-7d8e-9f01-{index:012x}"} for index in range(1000)]
    parsed = pb.SendAdEventBatchResponse.FromString(
        batch_response(Verdicts(records, []), 1000, pb.ACK_MODE_ACCEPTED)
    )
    assert parsed.accepted_count == 1000
    assert [result.index for result in parsed.results] == list(range(1000))
    assert parsed.results[999].event_id == records[999]["event_id"]
    assert parsed.results[999].status == pb.EVENT_STATUS_ACCEPTED


def test_results_past_the_cached_indexes_are_serialised_too() -> None:
    from aep.ingest import responses

    count = responses._MAX_CACHED_INDEX + 5
    records = [{"event_id": f"0192f3a4-5b6c-7d8e-9f01-{index:012x}"} for index in range(count)]
    expected = pb.SendAdEventBatchResponse(
        accepted_count=count,
        results=[
            pb.EventResult(index=i, event_id=r["event_id"], status=pb.EVENT_STATUS_ACCEPTED)
            for i, r in enumerate(records)
        ],
    )
    encoded = batch_response(Verdicts(records, []), count, pb.ACK_MODE_UNSPECIFIED)
    assert encoded == expected.SerializeToString()
