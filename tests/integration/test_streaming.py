"""StreamAdEvents against the real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.support import ServerProcess, running_server, stored_events, valid_event

pytestmark = pytest.mark.integration


def chunk(sequence: int, count: int, **overrides: object) -> pb.StreamAdEventsRequest:
    events = [valid_event(event_id=f"s{sequence}-{i}", **overrides) for i in range(count)]
    return pb.StreamAdEventsRequest(sequence=sequence, events=events)


def test_every_chunk_gets_an_ack_in_order_with_per_event_results(server: ServerProcess) -> None:
    requests = [chunk(sequence, 10) for sequence in range(1, 21)]
    bad = chunk(21, 3)
    bad.events[1].user_id = ""
    requests.append(bad)
    with grpc.insecure_channel(server.address) as channel:
        acks = list(pb_grpc.AdEventServiceStub(channel).StreamAdEvents(iter(requests), timeout=10))
    assert [ack.sequence for ack in acks] == list(range(1, 22))
    assert all(ack.accepted_count == 10 and len(ack.results) == 10 for ack in acks[:20])
    last = acks[-1]
    assert (last.accepted_count, last.rejected_count) == (2, 1)
    assert last.results[1].status == pb.EVENT_STATUS_REJECTED
    assert last.results[1].reason.startswith("user_id:")
    assert server.stop() == 0
    stored = {str(e["event_id"]) for e in stored_events(server.events_dir)}
    assert len(stored) == 202
    assert "s21-1" not in stored


def test_a_malformed_chunk_ends_the_stream_with_invalid_argument(server: ServerProcess) -> None:
    def requests() -> Iterator[bytes]:
        yield chunk(1, 2).SerializeToString()
        yield b"\xff\xff\xff"

    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/adevents.v1.AdEventService/StreamAdEvents",
            None,
            pb.StreamAdEventsResponse.FromString,
        )
        responses = iter(call(requests(), timeout=10))
        first = next(responses)
        with pytest.raises(grpc.RpcError) as raised:
            next(responses)
    assert first.sequence == 1
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_committed_stream_acks_after_the_write(server: ServerProcess) -> None:
    requests = [chunk(sequence, 5) for sequence in range(1, 4)]
    for request in requests:
        request.ack_mode = pb.ACK_MODE_COMMITTED
    with grpc.insecure_channel(server.address) as channel:
        acks = list(pb_grpc.AdEventServiceStub(channel).StreamAdEvents(iter(requests), timeout=10))
        assert all(ack.ack_mode == pb.ACK_MODE_COMMITTED for ack in acks)
        assert len(stored_events(server.events_dir)) == 15  # before any shutdown


def test_a_full_queue_holds_acks_back_then_ends_with_resource_exhausted(tmp_path: Path) -> None:
    with running_server(
        tmp_path,
        AEP_QUEUE_MAX_EVENTS="50",
        AEP_BATCH_SIZE="1000",
        AEP_BATCH_FLUSH_INTERVAL="1h",
        AEP_SERVER_STREAM_BACKPRESSURE_WAIT="500ms",
    ) as server:
        requests = [chunk(sequence, 10) for sequence in range(1, 11)]
        acks: list[pb.StreamAdEventsResponse] = []
        started = time.monotonic()
        with grpc.insecure_channel(server.address) as channel:
            responses = pb_grpc.AdEventServiceStub(channel).StreamAdEvents(
                iter(requests), timeout=10
            )
            with pytest.raises(grpc.RpcError) as raised:
                acks.extend(responses)
        waited = time.monotonic() - started
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [ack.sequence for ack in acks] == [1, 2, 3, 4, 5]  # 50 events of room
        assert waited >= 0.5  # the sixth ack was withheld for the backpressure wait
        assert server.stop() == 0
        stored = sorted(str(e["event_id"]) for e in stored_events(server.events_dir))
    # Exactly what was acknowledged: nothing of the refused chunks.
    assert stored == sorted(r.event_id for ack in acks for r in ack.results)


def test_client_stream_mode(server: ServerProcess, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    ids_file = tmp_path / "ids"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aep.tools.client",
            "--quiet",
            "--json",
            "--server",
            server.address,
            "--mode",
            "stream",
            "--events",
            "2050",
            "--batch",
            "100",
            "--concurrent",
            "3",
            "--ids-out",
            str(ids_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["accepted"] == 2050
    assert summary["rpcs"] == 21  # one latency sample per chunk
    assert server.stop() == 0
    stored = {str(e["event_id"]) for e in stored_events(server.events_dir)}
    assert stored == set(ids_file.read_text().split())
