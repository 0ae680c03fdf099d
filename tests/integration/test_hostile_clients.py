"""Clients that try to exhaust the server: it stays healthy and its memory bounded.

Some of these clients cannot be played by grpcio (a receive window of 0, a
frame that declares more bytes than it carries); they speak raw HTTP/2
(tests/raw_http2.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from support import ServerProcess, running_server, valid_event

from aep.proto.adevents.v1 import ad_events_pb2 as pb

pytestmark = pytest.mark.integration

SERVICE = "/adevents.v1.AdEventService"


def rss_mb(server: ServerProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


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
