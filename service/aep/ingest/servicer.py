"""AdEventService: decode, validate, hand to the pipeline, answer per event.

No storage code here. Requests arrive as raw bytes (see server.py) so that a
malformed message is answered with INVALID_ARGUMENT instead of gRPC's generic
INTERNAL "Exception deserializing request". Helpers raise RequestRefusedError; the
decoding wrapper (unary) or the stream turns it into the RPC status.
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
from aep.events.codec import KIND_OF_REQUEST_TYPE, Codec, DecodedRequest, MalformedRequestError
from aep.events.schema import EventRecord, format_epoch
from aep.events.validation import Verdicts
from aep.observability.health import ServingState
from aep.pipeline.core import (
    AdmissionError,
    CommitFailedError,
    Pipeline,
    PipelineClosedError,
    QueueFullError,
)
from aep.pipeline.ledger import IngestStats
from aep.pipeline.wal import REPLAY_BYTES_PER_EVENT, WalError, WriteAheadLog
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import AckMode, ServerSettings

_ACK_FROM_SETTING = {
    AckMode.ACCEPTED: pb.ACK_MODE_ACCEPTED,
    AckMode.DURABLE: pb.ACK_MODE_DURABLE,
    AckMode.COMMITTED: pb.ACK_MODE_COMMITTED,
}
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


@dataclass(slots=True)
class _StreamEnd:
    refusal: RequestRefusedError | None = None


class AdEventServicer:
    def __init__(
        self,
        pipeline: Pipeline,
        codec: Codec,
        stats: IngestStats,
        serving: ServingState,
        *,
        server: ServerSettings,
        default_ack: AckMode,
        store_type: str,
        wal: WriteAheadLog | None = None,
        observe_rpc: RpcObserver | None = None,
    ) -> None:
        self._wal = wal
        self._pipeline = pipeline
        self._codec = codec
        self._stats = stats
        self._serving = serving
        self._max_batch_events = server.max_batch_events
        self._max_message_bytes = server.max_message_bytes
        self._max_unacked_chunks = server.stream_max_unacked_chunks
        self._backpressure_wait = server.stream_backpressure_wait
        self._default_ack = _ACK_FROM_SETTING[default_ack]
        self._store_type = store_type
        self._observe_rpc = observe_rpc

    @property
    def codec_name(self) -> str:
        return self._codec.name

    # -- request decoding -----------------------------------------------------
    def _decode(self, request_type: type[Message], raw: bytes) -> Any:
        """The codec's DecodedRequest for AdEvent requests, else the message."""
        if len(raw) > self._max_message_bytes:
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
                    await refusal.abort(context)

            return handle

        name = method.__name__

        async def observed(raw: bytes, context: Context) -> ResponseT:
            started = time.perf_counter()
            try:
                response = await method(self._decode(request_type, raw), len(raw))
            except RequestRefusedError as refusal:
                observe(name, refusal.code, time.perf_counter() - started)
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
        ack_mode = self._ack_mode(request.ack_mode, 1)
        if not request.has_event:
            self._stats.received += 1
            self._stats.rejected_invalid += 1
            raise RequestRefusedError(grpc.StatusCode.INVALID_ARGUMENT, "event: required")
        verdicts = self._accept(request)
        if verdicts.rejected:
            raise RequestRefusedError(grpc.StatusCode.INVALID_ARGUMENT, verdicts.rejected[0][2])
        records = verdicts.records
        event_id = records[0]["event_id"]
        done = self._admit(records, wire_bytes, ack_mode)
        if done is not None:
            await self._commit(done)
        return pb.SendAdEventResponse(event_id=event_id, status=_ACCEPTED, ack_mode=ack_mode)

    async def SendAdEventBatch(self, request: DecodedRequest, wire_bytes: int) -> bytes:
        """Answers a serialised SendAdEventBatchResponse (the codec's)."""
        count = request.count
        self._check_batch_length(count)
        ack_mode = self._ack_mode(request.ack_mode, count)
        self._refuse_early_if_full(request, wire_bytes)
        verdicts = self._accept(request)
        records = verdicts.records
        if records:
            nbytes = wire_bytes * len(records) // count
            done = self._admit(records, nbytes, ack_mode)
            if done is not None:
                await self._commit(done)
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
                        await self._commit(done)
                    except RequestRefusedError as refusal:
                        await refusal.abort(context)
                if self._observe_rpc is not None:
                    seconds = time.perf_counter() - started
                    self._observe_rpc("StreamAdEvents", grpc.StatusCode.OK, seconds)
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
        try:
            async for raw in request_iterator:
                started = time.perf_counter()
                chunk: DecodedRequest = self._decode(pb.StreamAdEventsRequest, raw)
                count = chunk.count
                self._check_batch_length(count)
                ack_mode = self._ack_mode(chunk.ack_mode, count)
                verdicts = self._accept(chunk)
                records = verdicts.records
                response = chunk.response(ack_mode)
                done = None
                if records:
                    nbytes = len(raw) * len(records) // count
                    if not self._pipeline.has_room(len(records), nbytes):
                        # Withhold this ack (and stop reading) until there is room.
                        await self._pipeline.wait_for_room(
                            len(records), nbytes, self._backpressure_wait
                        )
                    done = self._admit(records, nbytes, ack_mode)
                # Blocks once max unacked chunks are pending: flow control.
                await acks.put((response, done, started))
        except RequestRefusedError as refusal:
            await acks.put(_StreamEnd(refusal))
        else:
            await acks.put(_StreamEnd())

    async def HealthCheck(
        self, request: pb.HealthCheckRequest, wire_bytes: int
    ) -> pb.HealthCheckResponse:
        pipeline = self._pipeline
        store = pipeline.store_state
        server_time = Timestamp()
        server_time.GetCurrentTime()
        return pb.HealthCheckResponse(
            status=(
                pb.HealthCheckResponse.SERVING_STATUS_SERVING
                if self._serving.serving
                else pb.HealthCheckResponse.SERVING_STATUS_NOT_SERVING
            ),
            # The write-ahead log's backlog from earlier runs is pending too.
            pending_events=pipeline.pending_events + self._stats.wal_backlog_events,
            pending_bytes=pipeline.pending_bytes
            + self._stats.wal_backlog_events * REPLAY_BYTES_PER_EVENT,
            store_type=self._store_type,
            store_healthy=store.healthy,
            store_detail=store.detail,
            version=__version__,
            server_time=server_time,
        )

    # -- the per-event path -----------------------------------------------------------
    def _accept(self, request: DecodedRequest) -> Verdicts:
        """Count a request's events (the codec checked them); their verdicts."""
        stats = self._stats
        verdicts = request.verdicts
        by_type = stats.received_by_type
        for event_type, count in enumerate(request.received_by_type):
            by_type[event_type] += count
        stats.received += request.count
        stats.rejected_invalid += len(verdicts.rejected)
        return verdicts

    def _check_batch_length(self, count: int) -> None:
        if count == 0:
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT, "events: the batch is empty"
            )
        if count > self._max_batch_events:
            raise RequestRefusedError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"events: {count} events exceed server.max_batch_events={self._max_batch_events}",
            )

    def _ack_mode(self, requested: int, count: int) -> pb.AckMode.ValueType:
        if requested == pb.ACK_MODE_UNSPECIFIED:
            return self._default_ack
        if requested in (pb.ACK_MODE_ACCEPTED, pb.ACK_MODE_COMMITTED) or (
            requested == pb.ACK_MODE_DURABLE and self._wal is not None
        ):
            return pb.AckMode.ValueType(requested)
        self._stats.received += count
        self._stats.rejected_invalid += count
        if requested == pb.ACK_MODE_DURABLE:
            raise RequestRefusedError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ack_mode: ACK_MODE_DURABLE needs the write-ahead log, which this server "
                "has not enabled (wal.dir); use ACK_MODE_ACCEPTED or ACK_MODE_COMMITTED",
            )
        raise RequestRefusedError(
            grpc.StatusCode.INVALID_ARGUMENT, f"ack_mode: unknown value {requested}"
        )

    def _admit(
        self, records: list[EventRecord], nbytes: int, ack_mode: pb.AckMode.ValueType
    ) -> asyncio.Future[None] | None:
        """Admit now or refuse; returns what the ack has to wait for, if anything."""
        try:
            if ack_mode == pb.ACK_MODE_DURABLE:
                self._pipeline.reserve(len(records), nbytes)
                return asyncio.ensure_future(self._log_then_submit(records, nbytes))
            return self._pipeline.submit(
                records, nbytes, wait_for_commit=ack_mode == pb.ACK_MODE_COMMITTED
            )
        except AdmissionError as error:
            raise self._refusal(error, len(records), nbytes) from error

    def _refusal(self, error: AdmissionError, count: int, nbytes: int) -> RequestRefusedError:
        """The status for events the pipeline would not take, counted as rejected."""
        if isinstance(error, PipelineClosedError):
            self._stats.rejected_unavailable += count
            return RequestRefusedError(
                grpc.StatusCode.UNAVAILABLE, f"{error}; retry on another replica"
            )
        self._stats.rejected_overload += count
        return RequestRefusedError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(error),
            retry_after_s=self._pipeline.retry_delay(count, nbytes),
        )

    def _refuse_early_if_full(self, request: DecodedRequest, nbytes: int) -> None:
        """Before admission: refuse a request the queue cannot take anyway."""
        count = request.count
        if self._pipeline.has_room(count, nbytes):
            return
        stats = self._stats
        stats.received += count
        by_type = stats.received_by_type
        for event_type, of_type in enumerate(request.received_by_type):
            by_type[event_type] += of_type
        full = QueueFullError(self._pipeline.full_message())
        raise self._refusal(full, count, nbytes) from full

    async def _log_then_submit(self, records: list[EventRecord], nbytes: int) -> None:
        """Durable mode: the events reach the pipeline once their log append is fsynced."""
        assert self._wal is not None
        try:
            segment = await self._wal.append(records)
        except BaseException:
            self._pipeline.release(len(records), nbytes)
            self._stats.rejected_unavailable += len(records)
            raise
        self._pipeline.submit(records, nbytes, reserved=True, wal_segment=segment)

    async def _commit(self, done: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(done)
        except WalError as error:
            raise RequestRefusedError(
                grpc.StatusCode.UNAVAILABLE, f"{error}; retry (the events were not accepted)"
            ) from error
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
