"""AdEventService: decode, validate, offer to the pipeline, answer per event.

No storage code and no admission protocol here: Pipeline.offer() takes the
events or raises its one refusal, which is mapped to the RPC status below.
Requests arrive as raw bytes (see server.py) so that a malformed message is
answered with INVALID_ARGUMENT instead of gRPC's generic INTERNAL "Exception
deserializing request". Helpers raise RequestRefusedError; the decoding
wrapper (unary) or the stream turns it into the RPC status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from aep import __version__
from aep.events.block import EventBlock
from aep.events.codec import KIND_OF_REQUEST_TYPE, Codec, DecodedRequest, MalformedRequestError
from aep.events.schema import format_epoch
from aep.events.validation import Verdicts
from aep.ingest.deadlines import ReadDeadlines
from aep.observability.health import ServingState
from aep.pipeline.admission import AdmissionRefusedError, RefusalKind
from aep.pipeline.core import CommitFailedError, Pipeline
from aep.pipeline.lane import Lane
from aep.pipeline.ledger import Ledger, Rejection, RequestRejection
from aep.pipeline.wal import REPLAY_BYTES_PER_EVENT
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import AckMode, ServerSettings

# The pipeline's ack mode and the proto's, which the response echoes. Keyed by
# the proto number: an int hashes in C, an Enum member in Python.
_AckModes = tuple[AckMode, "pb.AckMode.ValueType"]
_ACKS: dict[int, _AckModes] = {
    pb.ACK_MODE_ACCEPTED: (AckMode.ACCEPTED, pb.ACK_MODE_ACCEPTED),
    pb.ACK_MODE_DURABLE: (AckMode.DURABLE, pb.ACK_MODE_DURABLE),
    pb.ACK_MODE_COMMITTED: (AckMode.COMMITTED, pb.ACK_MODE_COMMITTED),
}
_ACK_OF_SETTING = {modes[0]: modes for modes in _ACKS.values()}
# Where gRPC carries a google.rpc.Status with details (what grpcio-status reads).
STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ACCEPTED = pb.EVENT_STATUS_ACCEPTED

RequestT = TypeVar("RequestT", bound=Message | DecodedRequest)
ResponseT = TypeVar("ResponseT", bound=Message | bytes)
Context = grpc.aio.ServicerContext[Any, Any]
# (method name, status code, seconds): one call per unary RPC or acknowledged stream chunk.
RpcObserver = Callable[[str, grpc.StatusCode, float], None]
_Ack = tuple[bytes, "asyncio.Future[None] | None", float]  # serialised ack, commit, start


class RequestRefusedError(Exception):
    """The RPC (or stream) ends with this status; nothing of the request was admitted."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    async def abort(self, context: Context) -> NoReturn:
        """End the RPC; with retry_after_s, the status carries google.rpc.RetryInfo."""
        # grpc keeps the AbortError it raises on the call, in a reference cycle
        # (handler frame -> context -> call -> AbortError -> traceback -> handler
        # frame) that only the cyclic collector frees, and this exception becomes
        # its __context__. Without a traceback or cause it no longer reaches the
        # frames that hold the request, so the request's bytes are freed at once.
        self.__traceback__ = None
        self.__cause__ = self.__context__ = None
        if self.retry_after_s is None:
            await context.abort(self.code, self.message)
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        await context.abort(
            self.code,
            self.message,
            trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
        )


def _refused(refusal: AdmissionRefusedError) -> RequestRefusedError:
    """The status of events the pipeline would not take."""
    if refusal.kind is RefusalKind.OVERLOAD:
        return RequestRefusedError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message, refusal.retry_after_s
        )
    if refusal.kind is RefusalKind.CLOSING:
        return RequestRefusedError(
            grpc.StatusCode.UNAVAILABLE, f"{refusal.message}; retry on another replica"
        )
    return RequestRefusedError(
        grpc.StatusCode.UNAVAILABLE, f"{refusal.message}; retry (the events were not accepted)"
    )


@dataclass(slots=True)
class _StreamEnd:
    refusal: RequestRefusedError | None = None


class AdEventServicer:
    def __init__(
        self,
        pipeline: Pipeline,
        codec: Codec,
        ledger: Ledger,
        serving: ServingState,
        *,
        server: ServerSettings,
        default_ack: AckMode,
        store_type: str,
        observe_rpc: RpcObserver | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._codec = codec
        self._ledger = ledger
        self._serving = serving
        self._max_batch_events = server.max_batch_events
        self._max_message_bytes = server.max_message_bytes
        self._max_unacked_chunks = server.stream_max_unacked_chunks
        self._backpressure_wait = server.stream_backpressure_wait
        self._stream_idle = (
            ReadDeadlines(server.stream_idle_timeout) if server.stream_idle_timeout else None
        )
        self._default_ack = _ACK_OF_SETTING[default_ack]
        self._store_type = store_type
        self._observe_rpc = observe_rpc

    @property
    def codec_name(self) -> str:
        return self._codec.name

    # -- request decoding -----------------------------------------------------
    def _decode(self, request_type: type[Message], raw: bytes) -> Any:
        """The codec's DecodedRequest for AdEvent requests, else the message."""
        if len(raw) > self._max_message_bytes:
            self._ledger.request_refused(RequestRejection.TOO_LARGE)
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request of {len(raw)} bytes exceeds "
                f"server.max_message_bytes={self._max_message_bytes}",
            )
        try:
            kind = KIND_OF_REQUEST_TYPE.get(request_type)
            if kind is None:
                return request_type.FromString(raw)
            now = time.time()
            return self._codec.decode(kind, raw, now, format_epoch(now))
        except (DecodeError, MalformedRequestError) as error:
            self._ledger.request_refused(RequestRejection.MALFORMED)
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {request_type.DESCRIPTOR.full_name}: {error}",
            ) from error

    def unary(
        self,
        request_type: type[Message],
        method: Callable[[RequestT, int], Awaitable[ResponseT]],
    ) -> Callable[[bytes, Context], Awaitable[ResponseT]]:
        """A unary handler taking raw bytes; a RequestRefusedError becomes the RPC status.

        `method` gets the decoded request and its size on the wire.
        """
        observe = self._observe_rpc
        if observe is None:

            async def handle(raw: bytes, context: Context) -> ResponseT:
                try:
                    return await method(self._decode(request_type, raw), len(raw))
                except RequestRefusedError as refusal:
                    del raw  # the abort's traceback keeps this frame (see abort)
                    await refusal.abort(context)

            return handle

        name = method.__name__

        async def observed(raw: bytes, context: Context) -> ResponseT:
            started = time.perf_counter()
            try:
                response = await method(self._decode(request_type, raw), len(raw))
            except RequestRefusedError as refusal:
                observe(name, refusal.code, time.perf_counter() - started)
                del raw  # the abort's traceback keeps this frame (see abort)
                await refusal.abort(context)
            except asyncio.CancelledError:
                observe(name, grpc.StatusCode.CANCELLED, time.perf_counter() - started)
                raise
            except Exception:
                observe(name, grpc.StatusCode.UNKNOWN, time.perf_counter() - started)
                raise
            observe(name, grpc.StatusCode.OK, time.perf_counter() - started)
            return response

        return observed

    # -- RPCs ------------------------------------------------------------------------
    async def SendAdEvent(self, request: DecodedRequest, wire_bytes: int) -> pb.SendAdEventResponse:
        ack, ack_mode = self._ack_mode(request.ack_mode, 1)
        if not request.has_event:
            self._ledger.refused_whole(1, Rejection.INVALID)
            raise RequestRefusedError(grpc.StatusCode.INVALID_ARGUMENT, "event: required")
        verdicts = self._accept(request)
        if verdicts.rejected:
            raise RequestRefusedError(grpc.StatusCode.INVALID_ARGUMENT, verdicts.rejected[0][2])
        block = request.block()
        event_id = block.event_ids[0]
        waiting = self._offer(block, wire_bytes, ack)
        if waiting is not None:
            await self._settled(waiting)
        return pb.SendAdEventResponse(event_id=event_id, status=_ACCEPTED, ack_mode=ack_mode)

    async def SendAdEventBatch(self, request: DecodedRequest, wire_bytes: int) -> bytes:
        """Answers a serialised SendAdEventBatchResponse (the codec's)."""
        count = request.count
        self._check_batch_length(count)
        ack, ack_mode = self._ack_mode(request.ack_mode, count)
        try:
            # Before admission: refuse what the pipeline cannot take anyway.
            self._pipeline.check(count, wire_bytes)
        except AdmissionRefusedError as refusal:
            raise _refused(refusal) from refusal
        self._accept(request)
        block = request.block()
        if len(block):
            nbytes = wire_bytes * len(block) // count
            waiting = self._offer(block, nbytes, ack)
            if waiting is not None:
                await self._settled(waiting)
        return request.response(ack_mode)

    async def StreamAdEvents(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Acks in chunk order; a reader task feeds a bounded queue of pending acks.

        Yields serialised StreamAdEventsResponses (the codec's).
        """
        acks: asyncio.Queue[_Ack | _StreamEnd] = asyncio.Queue(maxsize=self._max_unacked_chunks)
        reader = asyncio.create_task(self._read_chunks(request_iterator, acks))
        try:
            while True:
                item = await acks.get()
                if isinstance(item, _StreamEnd):
                    if item.refusal is not None:
                        await item.refusal.abort(context)
                    return
                response, done, started = item
                if done is not None:
                    try:
                        await self._settled(done)
                    except RequestRefusedError as refusal:
                        await refusal.abort(context)
                if self._observe_rpc is not None:
                    seconds = time.perf_counter() - started
                    self._observe_rpc(self.StreamAdEvents.__name__, grpc.StatusCode.OK, seconds)
                yield response
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read_chunks(
        self,
        request_iterator: AsyncIterator[bytes],
        acks: asyncio.Queue[_Ack | _StreamEnd],
    ) -> None:
        chunks = aiter(request_iterator)
        idle = self._stream_idle
        try:
            while True:
                try:
                    raw = await (anext(chunks) if idle is None else idle.within(anext(chunks)))
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    assert idle is not None
                    raise RequestRefusedError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no chunk for server.stream_idle_timeout={idle.timeout_s:g}s: "
                        "the stream is ended; open a new one to send more",
                    ) from None
                started = time.perf_counter()
                chunk: DecodedRequest = self._decode(pb.StreamAdEventsRequest, raw)
                count = chunk.count
                self._check_batch_length(count)
                ack, ack_mode = self._ack_mode(chunk.ack_mode, count)
                self._accept(chunk)
                block = chunk.block()
                response = chunk.response(ack_mode)
                done = None
                if len(block):
                    nbytes = len(raw) * len(block) // count
                    # Withhold this ack (and stop reading) until there is room.
                    await self._pipeline.wait_for_room(len(block), nbytes, self._backpressure_wait)
                    done = self._offer(block, nbytes, ack)
                # Blocks once max unacked chunks are pending: flow control.
                await acks.put((response, done, started))
        except RequestRefusedError as refusal:
            await acks.put(_StreamEnd(refusal))
        else:
            await acks.put(_StreamEnd())
        finally:
            # grpc's request generator and the chunk it last yielded are in a
            # reference cycle: closed, the chunk is freed now, not by the cyclic GC.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def HealthCheck(
        self, request: pb.HealthCheckRequest, wire_bytes: int
    ) -> pb.HealthCheckResponse:
        pipeline = self._pipeline
        server_time = Timestamp()
        server_time.GetCurrentTime()
        now = time.monotonic()
        stores = [_store_status(lane, now) for lane in pipeline.lanes]
        unhealthy = [status for status in stores if not status.healthy]
        if len(stores) == 1:
            detail = stores[0].detail
        else:
            detail = "; ".join(f"{s.store_type}: {s.detail}" for s in unhealthy) or "ok"
        return pb.HealthCheckResponse(
            status=(
                pb.HealthCheckResponse.SERVING_STATUS_SERVING
                if self._serving.serving
                else pb.HealthCheckResponse.SERVING_STATUS_NOT_SERVING
            ),
            # The write-ahead log's backlog from earlier runs is pending too.
            pending_events=pipeline.pending_events + self._ledger.wal_backlog_events,
            pending_bytes=pipeline.pending_bytes
            + self._ledger.wal_backlog_events * REPLAY_BYTES_PER_EVENT,
            store_type=self._store_type,
            store_healthy=not unhealthy,
            store_detail=detail,
            version=__version__,
            server_time=server_time,
            stores=stores,
        )

    # -- the per-event path -----------------------------------------------------------
    def _accept(self, request: DecodedRequest) -> Verdicts:
        """Count a request's events (the codec checked them); their verdicts."""
        verdicts = request.verdicts
        self._ledger.received(request.count, request.received_by_type, len(verdicts.rejected))
        return verdicts

    def _check_batch_length(self, count: int) -> None:
        if count == 0:
            self._ledger.request_refused(RequestRejection.EMPTY)
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT, "events: the batch is empty"
            )
        if count > self._max_batch_events:
            self._ledger.refused_whole(count, Rejection.INVALID)
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"events: {count} events exceed server.max_batch_events={self._max_batch_events}",
            )

    def _ack_mode(self, requested: int, count: int) -> _AckModes:
        if requested == pb.ACK_MODE_UNSPECIFIED:
            return self._default_ack
        ack = _ACKS.get(requested)
        if ack is not None and (ack[0] is not AckMode.DURABLE or self._pipeline.durable_acks):
            return ack
        self._ledger.refused_whole(count, Rejection.INVALID)
        if requested == pb.ACK_MODE_DURABLE:
            raise RequestRefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ack_mode: ACK_MODE_DURABLE needs the write-ahead log, which this server "
                "has not enabled (wal.dir); use ACK_MODE_ACCEPTED or ACK_MODE_COMMITTED",
            )
        raise RequestRefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"ack_mode: unknown value {requested}"
        )

    def _offer(self, block: EventBlock, nbytes: int, ack: AckMode) -> asyncio.Future[None] | None:
        """Admit now or refuse; returns what the ack has to wait for, if anything."""
        try:
            return self._pipeline.offer(block, nbytes, ack)
        except AdmissionRefusedError as refusal:
            raise _refused(refusal) from refusal

    async def _settled(self, waiting: asyncio.Future[None]) -> None:
        """Wait for the log append (durable) or the store write (committed)."""
        try:
            # Shielded: a cancelled RPC leaves the append or the write to finish.
            await asyncio.shield(waiting)
        except AdmissionRefusedError as refusal:
            raise _refused(refusal) from refusal
        except CommitFailedError as error:
            # Said only of what the dead-letter append really wrote.
            if not error.lost:
                where = f"they were dead-lettered ({error.dead_lettered} events)"
            elif not error.dead_lettered:
                where = (
                    "the dead-letter file could not be written either: "
                    f"{error.lost} events were lost"
                )
            else:
                where = (
                    f"{error.dead_lettered} events were dead-lettered and {error.lost} were lost "
                    "(the dead-letter file could not take them)"
                )
            raise RequestRefusedError(
                grpc.StatusCode.UNAVAILABLE,
                f"the store refused the events past the retry bound; {where} "
                f"(retrying with the same event_ids is safe): {error.reason}",
            ) from error


def _store_status(lane: Lane, now: float) -> pb.StoreStatus:
    """One store's line of HealthCheck."""
    state = lane.health.state
    spill = lane.spill
    if not state.healthy:
        full = lane.spill_full if spill is not None else not lane.admission.has_room(1, 1)
        lane_state = pb.StoreStatus.STATE_FULL if full else pb.StoreStatus.STATE_FAILING
    elif lane.spilling:
        lane_state = pb.StoreStatus.STATE_SPILLING
    else:
        lane_state = pb.StoreStatus.STATE_WRITING
    return pb.StoreStatus(
        store_type=lane.name,
        state=lane_state,
        healthy=state.healthy,
        detail=state.detail,
        pending_events=lane.pending_events,
        spill_events=spill.events if spill is not None else 0,
        spill_bytes=lane.spill_bytes,
        spill_capacity_bytes=spill.max_bytes if spill is not None else 0,
        failing_seconds=(
            now - state.failing_since
            if not state.healthy and state.failing_since is not None
            else 0.0
        ),
    )
