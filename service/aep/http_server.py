"""HTTP on metrics.port: GET /metrics (Prometheus text), /health and /ready.

/health and /ready answer 200 while gRPC health is SERVING and 503 otherwise,
so HTTP and gRPC probes always agree. A deliberately small HTTP/1.1 server:
three read-only endpoints do not justify a web framework on the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aep.health import ServingState

logger = logging.getLogger(__name__)

_MAX_REQUEST_HEAD = 8192
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HttpEndpoints:
    def __init__(self, serving: ServingState, render_metrics: Callable[[], bytes | None]) -> None:
        self._serving = serving
        self._render_metrics = render_metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if len(head) > _MAX_REQUEST_HEAD:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3:
                status, content_type, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, content_type, body = self._respond(method, parts[1])
            reason = {
                200: "OK",
                400: "Bad Request",
                404: "Not Found",
                405: "Method Not Allowed",
                503: "Service Unavailable",
            }[status]
            header = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header if method == "HEAD" else header + body)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        except Exception:
            logger.exception("HTTP request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
