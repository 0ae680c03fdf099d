"""The HTTP port (metrics.port) cannot be used to exhaust the server's file descriptors:
a connection cap, and an idle timeout that also ends a slowly sent request head."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.support import ServerProcess, running_server, scrape

pytestmark = pytest.mark.integration

SOCKETS = 500
DEFAULT_MAX_CONNECTIONS = 64


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def _grpc_serving(server: ServerProcess) -> bool:
    with grpc.insecure_channel(server.address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def _closed_by_peer(connection: socket.socket, timeout_s: float) -> bool:
    """Whether the other end closed the connection within timeout_s."""
    connection.settimeout(timeout_s)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True
    return True


def test_hundreds_of_idle_sockets_leave_the_fds_bounded_and_the_ports_answering(
    tmp_path: Path,
) -> None:
    """Default settings (64 connections, 10 s idle timeout): 500 sockets held open."""
    with running_server(tmp_path) as server:
        pid = _pid(server)
        scrape(server.metrics_port)
        fds_before, rss_before = _fd_count(pid), _rss_kib(pid)
        sockets: list[socket.socket] = []
        peak_fds = fds_before
        try:
            for index in range(SOCKETS):
                sockets.append(
                    socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
                )
                if index % 50 == 49:
                    peak_fds = max(peak_fds, _fd_count(pid))
            # Answered after every connect above was accepted (one listening socket, FIFO).
            metrics = scrape(server.metrics_port)
            serving = _grpc_serving(server)
            fds_held, rss_held = _fd_count(pid), _rss_kib(pid)
            peak_fds = max(peak_fds, fds_held)
            closed_at_once = sum(_closed_by_peer(s, 0.01) for s in sockets)
        finally:
            for connection in sockets:
                connection.close()
        print(
            f"{SOCKETS} sockets on the metrics port: fds {fds_before} before, peak {peak_fds}, "
            f"{fds_held} held; RSS {rss_before} KiB before, {rss_held} KiB held; "
            f"closed by the server at once: {closed_at_once}; "
            f"/metrics answered: {bool(metrics.samples)}; gRPC health SERVING: {serving}"
        )
        assert metrics.samples
        assert serving
        assert peak_fds <= fds_before + DEFAULT_MAX_CONNECTIONS + 8
        assert closed_at_once >= SOCKETS - DEFAULT_MAX_CONNECTIONS - 1


def test_idle_and_slowly_talking_connections_are_closed_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    with running_server(tmp_path, AEP_METRICS_IDLE_TIMEOUT="1s") as server:
        idle = [
            socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
            for _ in range(10)
        ]
        slow = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
        stop = threading.Event()

        def trickle() -> None:
            """A slowloris: a request head one byte at a time, never finished."""
            with contextlib.suppress(OSError):
                for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000:
                    if stop.wait(0.1):
                        return
                    slow.send(bytes([byte]))

        sender = threading.Thread(target=trickle)
        started = time.monotonic()
        sender.start()
        try:
            idle_closed = [_closed_by_peer(s, 4.0) for s in idle]
            idle_s = time.monotonic() - started
            slow_closed = _closed_by_peer(slow, 4.0)
            slow_s = time.monotonic() - started
        finally:
            stop.set()
            sender.join(timeout=5)
            for connection in [*idle, slow]:
                connection.close()
        healthy_after = scrape(server.metrics_port)
    print(
        f"idle timeout 1s: {sum(idle_closed)}/10 idle sockets closed by the server after "
        f"{idle_s:.2f}s; slowloris closed: {slow_closed} after {slow_s:.2f}s"
    )
    assert all(idle_closed)
    assert slow_closed
    assert 0.8 <= idle_s <= 3.0
    assert slow_s <= 3.0
    assert healthy_after.samples
