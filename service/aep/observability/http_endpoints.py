"""HTTP on metrics.port: GET /metrics (Prometheus text), /health and /ready.

/health and /ready answer 200 while gRPC health is SERVING and 503 otherwise,
so HTTP and gRPC probes always agree. A deliberately small HTTP/1.1 server:
three read-only endpoints do not justify a web framework on the image.

One request per connection (Connection: close). At most `max_connections` are
open, so sockets on this port cannot use up the file descriptors the gRPC
port needs. At the cap a new connection takes the place of the oldest one
still waiting for its request (a stale or hostile one; a scraper sends its
request at once), or is closed at once when every connection is being answered.
Connections are accepted one at a time by our own loop (not asyncio.Server,
which accepts a whole backlog per wake-up), so the open descriptors stay near
the cap even under a flood of connects. Each connection has `idle_timeout`
from its accept to deliver its whole request head (a head trickled in byte by
byte is ended too), and again to take its response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from aep.observability.health import ServingState

logger = logging.getLogger(__name__)

_MAX_REQUEST_HEAD = 8192
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_LISTEN_BACKLOG = 128
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(eq=False)  # identity hash: a key of the open-connections dict
class _Connection:
    sock: socket.socket
    deadline: float  # loop time by which the request head must have arrived
    writer: asyncio.StreamWriter | None = None
    waiting: bool = True  # for its request head (may be replaced at the cap)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        else:  # not handed to a transport yet: its task closes the socket
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening, like asyncio.start_server: one per address of host."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, protocol)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(_LISTEN_BACKLOG)
            listener.setblocking(False)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    return sockets


class HttpEndpoints:
    def __init__(
        self,
        serving: ServingState,
        render_metrics: Callable[[], bytes | None],
        *,
        max_connections: int = 64,
        idle_timeout: float = 10.0,
    ) -> None:
        self._serving = serving
        self._render_metrics = render_metrics
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._listeners: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        # Open connections, oldest first (a dict as an ordered set).
        self._connections: dict[_Connection, None] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self._listeners = _listening_sockets(host, port)
        self._acceptors = [
            asyncio.create_task(self._accept(listener), name="http-accept")
            for listener in self._listeners
        ]
        return int(self._listeners[0].getsockname()[1])

    async def close(self) -> None:
        for acceptor in self._acceptors:
            acceptor.cancel()
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        for connection in list(self._connections):
            connection.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as error:  # e.g. EMFILE: let descriptors free up, go on
                logger.warning("HTTP accept failed", extra={"error": str(error)})
                await asyncio.sleep(0.1)
                continue
            if not self._make_room():
                sock.close()  # over the cap, every connection being answered
            else:
                connection = _Connection(sock, loop.time() + self._idle_timeout)
                self._connections[connection] = None
                handler = asyncio.create_task(self._handle(connection))
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
            # sock_accept returns without yielding while connects are queued:
            # let the handlers run (and free descriptors) between two accepts.
            await asyncio.sleep(0)

    def _make_room(self) -> bool:
        connections = self._connections
        if len(connections) < self._max_connections:
            return True
        oldest_waiting = next((c for c in connections if c.waiting), None)
        if oldest_waiting is None:
            return False
        del connections[oldest_waiting]
        oldest_waiting.abort()
        return True

    def _respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            metrics = self._render_metrics()
            if metrics is None:
                return 404, "text/plain", b"metrics are off (metrics.enabled: false)\n"
            return 200, _PROMETHEUS_TEXT, metrics
        if path in ("/health", "/healthz", "/ready", "/readyz"):
            if self._serving.serving:
                return 200, "text/plain", b"SERVING\n"
            return 503, "text/plain", b"NOT_SERVING\n"
        return 404, "text/plain", b"not found; try /metrics or /health\n"

    async def _handle(self, connection: _Connection) -> None:
        writer: asyncio.StreamWriter | None = None
        answered = False
        try:
            async with asyncio.timeout_at(connection.deadline):
                if connection not in self._connections:  # replaced at the cap
                    return
                reader, writer = await asyncio.open_connection(
                    sock=connection.sock, limit=_MAX_REQUEST_HEAD
                )
                connection.writer = writer
                if connection not in self._connections:  # replaced at the cap
                    return
                head = await reader.readuntil(b"\r\n\r\n")
            if connection not in self._connections:  # replaced at the cap
                return
            connection.waiting = False
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3:
                status, content_type, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, content_type, body = self._respond(method, parts[1])
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            async with asyncio.timeout(self._idle_timeout):
                writer.write(header if method == "HEAD" else header + body)
                await writer.drain()
            answered = True
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            OSError,  # the peer reset or vanished
        ):
            pass
        except Exception:
            logger.exception("HTTP request failed")
        finally:
            self._connections.pop(connection, None)
            if writer is None:
                connection.sock.close()
            else:
                await self._close(writer, answered)

    async def _close(self, writer: asyncio.StreamWriter, answered: bool) -> None:
        if not answered:
            writer.transport.abort()  # nothing left to send: no lingering close
            return
        writer.close()
        try:
            async with asyncio.timeout(self._idle_timeout):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()  # the peer does not take the rest of the response
        except Exception:  # noqa: S110 (the connection is gone either way)
            pass
