"""Clients that try to exhaust the server: it stays healthy and its memory bounded.

Some of these clients cannot be played by grpcio (a receive window of 0, a
frame that declares more bytes than it carries); they speak raw HTTP/2
(tests/helpers/raw_http2.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from tests.helpers.raw_http2 import RawGrpcConnection, grpc_frame
from tests.helpers.support import ServerProcess, running_server, valid_event

pytestmark = pytest.mark.integration

SERVICE = "/adevents.v1.AdEventService"


def rss_mb(server: ServerProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)


def probe_health_and_reflection(server: ServerProcess) -> float:
    """Health/Check and a reflection listing, each with a 1 s deadline; the slower one's time."""
    with grpc.insecure_channel(server.address) as channel:
        started = time.monotonic()
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
        health_s = time.monotonic() - started
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        started = time.monotonic()
        (listing,) = list(
            reflection(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=1)
        )
        reflection_s = time.monotonic() - started
        names = {service.name for service in listing.list_services_response.service}
        assert "adevents.v1.AdEventService" in names
    return max(health_s, reflection_s)


def wait_until_the_server_ends_them(
    connections: list[RawGrpcConnection],
    calls: list[tuple[RawGrpcConnection, int]],
    timeout_s: float,
    what: str,
) -> tuple[set[int | None], set[str]]:
    """Pump every connection until the server has closed every call; their statuses and messages."""

    def all_ended() -> bool:
        for connection in connections:
            connection.pump(0.01)
        return all(c.streams[s].closed for c, s in calls)

    wait_until(all_ended, timeout_s, what)
    return (
        {c.streams[s].grpc_status for c, s in calls},
        {c.streams[s].grpc_message for c, s in calls},
    )


def one_more_call(server: ServerProcess) -> grpc.RpcError | None:
    """An AdEventService call: past server.max_concurrent_rpcs, refused at once."""
    with grpc.insecure_channel(server.address) as channel:
        try:
            channel.unary_unary(f"{SERVICE}/SendAdEvent", None, None)(
                pb.SendAdEventRequest(event=valid_event()).SerializeToString(), timeout=2
            )
        except grpc.RpcError as error:
            refusal = error
        else:
            return None
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refusal
    return refusal


def test_health_answers_beside_1000_idle_streams_which_the_server_ends(tmp_path: Path) -> None:
    calls, per_connection, idle_timeout_s = 1000, 100, 5
    with running_server(tmp_path, AEP_SERVER_STREAM_IDLE_TIMEOUT=f"{idle_timeout_s}s") as server:
        connections = [RawGrpcConnection(server.grpc_port) for _ in range(calls // per_connection)]
        try:
            streams = []
            for connection in connections:
                for _ in range(per_connection):
                    stream_id = connection.open_call(f"{SERVICE}/StreamAdEvents")
                    chunk = pb.StreamAdEventsRequest(sequence=1, events=[valid_event()])
                    connection.queue(stream_id, grpc_frame(chunk.SerializeToString()))
                    streams.append((connection, stream_id))
            opened = time.monotonic()

            def all_acked() -> bool:
                for connection in connections:
                    connection.pump(0.01)
                return all(c.streams[s].data_bytes > 0 for c, s in streams)

            # Each stream got the ack of its one chunk: the server holds all of them.
            wait_until(all_acked, 30, f"{calls} streams acknowledged")
            slowest = probe_health_and_reflection(server)
            refused = one_more_call(server)
            assert refused is not None
            assert "server.max_concurrent_rpcs=1000" in (refused.details() or "")
            statuses, messages = wait_until_the_server_ends_them(
                connections, streams, idle_timeout_s + 20, "the idle streams ended by the server"
            )
            ended_after = time.monotonic() - opened
        finally:
            for connection in connections:
                connection.close()
        print(
            f"{calls} idle streams: health and reflection answered in {slowest * 1000:.0f} ms; "
            f"streams ended by the server after {ended_after:.1f}s (idle timeout "
            f"{idle_timeout_s}s), statuses {statuses}"
        )
        assert statuses == {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}
        assert any("server.stream_idle_timeout=5s" in message for message in messages)
        probe_health_and_reflection(server)


def test_health_answers_beside_1000_truncated_unary_calls_which_time_out(tmp_path: Path) -> None:
    """Each call's frame declares 6 MB and carries 10 bytes, then the client stops sending."""
    calls, per_connection, read_timeout_s = 1000, 100, 5
    with running_server(tmp_path, AEP_SERVER_REQUEST_READ_TIMEOUT=f"{read_timeout_s}s") as server:
        connections = [RawGrpcConnection(server.grpc_port) for _ in range(calls // per_connection)]
        try:
            streams = []
            for connection in connections:
                for _ in range(per_connection):
                    stream_id = connection.open_call(f"{SERVICE}/SendAdEvent")
                    connection.queue(stream_id, grpc_frame(b"\x0a" * 10, declared_length=6_000_000))
                    streams.append((connection, stream_id))
            opened = time.monotonic()

            def limit_reached() -> bool:
                for connection in connections:
                    connection.pump(0.0)
                return one_more_call(server) is not None

            # The server holds all of them once one more AdEventService call is refused.
            wait_until(limit_reached, 30, f"{calls} truncated calls held by the server")
            slowest = probe_health_and_reflection(server)
            statuses, messages = wait_until_the_server_ends_them(
                connections, streams, read_timeout_s + 20, "the truncated calls ended by the server"
            )
            ended_after = time.monotonic() - opened
        finally:
            for connection in connections:
                connection.close()
        print(
            f"{calls} truncated unary calls: health and reflection answered in "
            f"{slowest * 1000:.0f} ms; calls ended by the server after {ended_after:.1f}s "
            f"(read timeout {read_timeout_s}s), statuses {statuses}"
        )
        assert statuses == {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}
        assert any("server.request_read_timeout=5s" in message for message in messages)
        # The slots are free again.
        with grpc.insecure_channel(server.address) as channel:
            response = channel.unary_unary(
                f"{SERVICE}/SendAdEvent", None, pb.SendAdEventResponse.FromString
            )(pb.SendAdEventRequest(event=valid_event()).SerializeToString(), timeout=5)
        assert response.status == pb.EVENT_STATUS_ACCEPTED
        probe_health_and_reflection(server)


def test_refused_large_requests_free_their_bytes_at_once(tmp_path: Path) -> None:
    """Requests over server.max_message_bytes are refused and their bytes freed.

    With gc.freeze and a young-generation threshold of 10,000 (app.py), the
    cyclic collector runs seldom: bytes held by a reference cycle piled up
    (1.9 GB after 250 requests of 7.86 MB).
    """
    requests, streams = 250, 50
    with running_server(tmp_path) as server:
        idle = rss_mb(server)
        payload = pb.SendAdEventBatchRequest(
            events=[valid_event(attributes={f"k{i}": "x" * 500 for i in range(30)})] * 512
        ).SerializeToString()
        assert 7_800_000 < len(payload) < 2 * 4 * 1024**2  # over the 4 MiB limit, under grpc's cut
        with grpc.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 * 1024**2)]
        ) as channel:
            send = channel.unary_unary(f"{SERVICE}/SendAdEventBatch", None, None)
            stream = channel.stream_stream(f"{SERVICE}/StreamAdEvents", None, None)

            def refused_unary() -> None:
                with pytest.raises(grpc.RpcError) as raised:
                    send(payload, timeout=10)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "server.max_message_bytes" in (raised.value.details() or "")

            def refused_stream() -> None:
                with pytest.raises(grpc.RpcError) as raised:
                    list(stream(iter([payload]), timeout=10))
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # Warm-up: gRPC's and the allocator's buffers for messages this large
            # (about 80 MB above idle, whatever the number of requests after).
            for _ in range(10):
                refused_unary()
                refused_stream()
            warm = rss_mb(server)
            started = time.monotonic()
            for _ in range(requests):
                refused_unary()
            for _ in range(streams):
                refused_stream()
            after = rss_mb(server)
        print(
            f"{requests} unary and {streams} stream requests of {len(payload) / 1e6:.2f} MB "
            f"refused in {time.monotonic() - started:.1f}s: RSS idle {idle:.0f} MB, "
            f"warmed up {warm:.0f} MB, after {after:.0f} MB"
        )
        assert after - warm < 100


def test_streams_whose_client_never_reads_acks_hold_bounded_memory(tmp_path: Path) -> None:
    """Clients announce a receive window of 0 and keep sending chunks.

    The server cannot deliver a single ack. It stops reading a stream once
    server.stream_max_unacked_chunks acks wait (the ack write blocks), and
    HTTP/2 flow control then holds the client back: what the server takes in
    per stream is those chunks plus the stream's receive window.
    """
    streams, max_s = 20, 25
    chunk = grpc_frame(
        pb.StreamAdEventsRequest(
            sequence=1, events=[valid_event(event_id=f"w{i}") for i in range(100)]
        ).SerializeToString()
    )
    with running_server(tmp_path) as server:
        idle = rss_mb(server)
        connections = [
            RawGrpcConnection(server.grpc_port, receive_window=0) for _ in range(streams)
        ]
        try:
            calls = [(c, c.open_call(f"{SERVICE}/StreamAdEvents")) for c in connections]
            queued = dict.fromkeys(range(streams), 0)

            def taken_in() -> list[int]:
                return [queued[i] - c.pending(s) for i, (c, s) in enumerate(calls)]

            started = time.monotonic()
            last_change, last_total = started, -1
            samples: list[tuple[float, float]] = []  # (time, RSS MB)
            while time.monotonic() - started < max_s:
                for index, (connection, stream_id) in enumerate(calls):
                    if connection.pending(stream_id) < 2 * len(chunk):
                        connection.queue(stream_id, chunk)
                        queued[index] += len(chunk)
                    connection.pump(0.0)
                total = sum(taken_in())
                now = time.monotonic()
                if total != last_total:
                    last_total, last_change = total, now
                if not samples or now - samples[-1][0] >= 1:
                    samples.append((now, rss_mb(server)))
                if now - last_change > 3:  # the server has stopped taking data
                    break
            plateau_after = last_change - started
            per_stream = max(taken_in())
            rss = rss_mb(server)
            assert not any(c.streams[s].closed for c, s in calls)  # still open, just stuck
        finally:
            for connection in connections:
                connection.close()
        print(
            f"{streams} streams that never read: the server took in at most "
            f"{per_stream / 1e6:.2f} MB per stream ({per_stream // len(chunk)} chunks of "
            f"{len(chunk)} B), no more after {plateau_after:.1f}s; RSS idle {idle:.0f} MB, "
            f"then {', '.join(f'{value:.0f}' for _, value in samples)} MB"
        )
        # 64 unacknowledged chunks, the ack being written, the chunk being read,
        # plus the 128 KiB receive window: about 0.4 MB; before, gRPC's BDP
        # probing grew the window to about 4.5 MB per stream.
        assert per_stream < 1_000_000
        assert rss - idle < 50


def test_a_stream_stuck_on_undeliverable_acks_ends_with_its_connection(tmp_path: Path) -> None:
    """The stream stays open while its client is connected, at most until
    server.max_connection_age plus its grace, when the server closes the connection."""
    age_s, grace_s = 2, 2
    chunk = grpc_frame(
        pb.StreamAdEventsRequest(sequence=1, events=[valid_event()] * 100).SerializeToString()
    )
    with (
        running_server(
            tmp_path,
            AEP_SERVER_MAX_CONNECTION_AGE=f"{age_s}s",
            AEP_SERVER_MAX_CONNECTION_AGE_GRACE=f"{grace_s}s",
        ) as server,
        RawGrpcConnection(server.grpc_port, receive_window=0) as connection,
    ):
        stream_id = connection.open_call(f"{SERVICE}/StreamAdEvents")
        started = time.monotonic()
        while connection.pump(0.01) and time.monotonic() - started < 30:
            if connection.pending(stream_id) < 2 * len(chunk):
                connection.queue(stream_id, chunk)
        closed_after = time.monotonic() - started
        print(
            f"a stream that never reads acks: GOAWAY {connection.goaway_received}, "
            f"connection closed by the server after {closed_after:.1f}s "
            f"(max_connection_age {age_s}s + grace {grace_s}s)"
        )
        assert connection.connection_closed and connection.goaway_received
        # gRPC adds up to 10 % jitter to the age; the grace is exact.
        assert age_s + grace_s - 0.5 < closed_after < age_s * 1.1 + grace_s + 10
        probe_health_and_reflection(server)
