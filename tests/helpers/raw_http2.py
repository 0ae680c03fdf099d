"""A gRPC client over a raw HTTP/2 socket (h2), for the clients grpcio will not play.

grpcio reads every response as it arrives and always frames whole messages,
so it cannot be a client that never reads (a receive window of 0 and no
WINDOW_UPDATE) or one that declares a large message and stops sending. This
one speaks just enough gRPC for that: HEADERS, length-prefixed DATA, and it
reads HEADERS/trailers. It answers PINGs and SETTINGS (h2 does so itself) and
never acknowledges received DATA unless asked to.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

GRPC_CONTENT_TYPE = "application/grpc"
_READ_CHUNK = 65536


def grpc_frame(payload: bytes, declared_length: int | None = None) -> bytes:
    """A gRPC length-prefixed message (uncompressed); declared_length may lie."""
    length = len(payload) if declared_length is None else declared_length
    return struct.pack(">BI", 0, length) + payload


@dataclass
class StreamState:
    stream_id: int
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data_bytes: int = 0
    ended: bool = False
    reset_code: int | None = None
    pending_send: bytearray = field(default_factory=bytearray)
    end_after_pending: bool = False

    @property
    def closed(self) -> bool:
        return self.ended or self.reset_code is not None

    @property
    def grpc_status(self) -> int | None:
        """grpc-status from the trailers (or from a trailers-only response)."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


class RawGrpcConnection:
    """One HTTP/2 connection to a gRPC server on 127.0.0.1.

    receive_window: the SETTINGS_INITIAL_WINDOW_SIZE this client announces;
    0 means the server may send HEADERS but no DATA on any stream, ever.
    """

    def __init__(self, port: int, *, receive_window: int = 65535, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = f"127.0.0.1:{port}"
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: receive_window},
        )
        self.h2.initiate_connection()
        self.streams: dict[int, StreamState] = {}
        self.goaway_received = False
        self._discarding = False  # after a GOAWAY: read until the server closes
        self.connection_closed = False  # the socket: closed by the server, or by close()
        self._flush()

    # -- sending ---------------------------------------------------------------
    def open_call(self, method: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> int:
        """Start a call to `/package.Service/Method`; returns the stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", self.authority),
            ("content-type", GRPC_CONTENT_TYPE),
            ("te", "trailers"),
            *metadata,
        ]
        self.h2.send_headers(stream_id, headers)
        self.streams[stream_id] = StreamState(stream_id)
        self._flush()
        return stream_id

    def queue(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue bytes for a stream; pump() sends them as the server's window allows."""
        state = self.streams[stream_id]
        state.pending_send += data
        state.end_after_pending = end_stream
        self._send_pending(state)
        self._flush()

    def pending(self, stream_id: int) -> int:
        return len(self.streams[stream_id].pending_send)

    def _send_pending(self, state: StreamState) -> None:
        if state.closed:
            state.pending_send.clear()
            return
        while state.pending_send:
            try:
                window = self.h2.local_flow_control_window(state.stream_id)
            except h2.exceptions.StreamClosedError:
                state.pending_send.clear()
                return
            size = min(window, self.h2.max_outbound_frame_size, len(state.pending_send))
            if size <= 0:
                return
            chunk = bytes(state.pending_send[:size])
            del state.pending_send[:size]
            last = not state.pending_send and state.end_after_pending
            self.h2.send_data(state.stream_id, chunk, end_stream=last)
        if state.end_after_pending:
            state.end_after_pending = False
            if not state.pending_send and not state.closed:
                # An empty DATA frame closes our side when the payload went out earlier.
                stream = self.h2.streams.get(state.stream_id)
                if stream is not None and stream.open:
                    self.h2.end_stream(state.stream_id)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.connection_closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.connection_closed = True

    # -- receiving -------------------------------------------------------------
    def pump(self, timeout_s: float = 0.0) -> bool:
        """Read what arrived within timeout_s, answer it, send what windows allow.

        Returns False once the connection is closed.
        """
        if self.connection_closed:
            return False
        readable, _, _ = select.select([self.sock], [], [], timeout_s)
        if readable:
            try:
                data = self.sock.recv(_READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self.connection_closed = True
                return False
            if self._discarding:
                return True
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                    raise
                # Frames after a GOAWAY in the same read (gRPC sends a PING with
                # it) make h2 raise before it reports the GOAWAY.
                self.goaway_received = True
                self._discarding = True
                return True
            for event in events:
                self._handle(event)
        for state in self.streams.values():
            if state.pending_send:
                self._send_pending(state)
        self._flush()
        return True

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._state(event.stream_id).headers.update(_decoded(event.headers))
        elif isinstance(event, h2.events.TrailersReceived):
            self._state(event.stream_id).trailers.update(_decoded(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            # Deliberately no acknowledge_received_data: the window stays shut.
            self._state(event.stream_id).data_bytes += len(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            self._state(event.stream_id).ended = True
        elif isinstance(event, h2.events.StreamReset):
            self._state(event.stream_id).reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            # GOAWAY: no new streams; the server closes the socket later.
            self.goaway_received = True

    def _state(self, stream_id: int) -> StreamState:
        return self.streams.setdefault(stream_id, StreamState(stream_id))

    def wait_closed(self, stream_id: int, timeout_s: float) -> StreamState:
        """Pump until the stream ends or is reset (or timeout_s passes)."""
        deadline = time.monotonic() + timeout_s
        state = self.streams[stream_id]
        while not state.closed and time.monotonic() < deadline:
            if not self.pump(min(0.05, max(0.0, deadline - time.monotonic()))):
                break
        return state

    def close(self) -> None:
        if not self.connection_closed:
            try:
                self.h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        self.connection_closed = True
        self.sock.close()

    def __enter__(self) -> RawGrpcConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _decoded(headers: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode() if isinstance(name, bytes) else name
        out[key] = value.decode() if isinstance(value, bytes) else value
    return out
