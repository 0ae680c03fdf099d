"""AdEventService: decode, validate, hand to the pipeline, answer per event.

No storage code here. Requests arrive as raw bytes (see server.py) so that a
malformed message is answered with INVALID_ARGUMENT instead of gRPC's generic
INTERNAL "Exception deserializing request".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from aep import __version__
from aep.health import ServingState
from aep.ids import EventIdGenerator
from aep.pipeline import (
    AdmissionError,
    CommitFailedError,
    Pipeline,
    PipelineClosedError,
)
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.records import EventRecord, format_epoch, to_record
from aep.settings import AckMode, ServerSettings
from aep.stats import IngestStats
from aep.validation import EventValidator

_ACK_FROM_SETTING = {
    AckMode.ACCEPTED: pb.ACK_MODE_ACCEPTED,
    AckMode.DURABLE: pb.ACK_MODE_DURABLE,
    AckMode.COMMITTED: pb.ACK_MODE_COMMITTED,
}
_ACCEPTED = pb.EVENT_STATUS_ACCEPTED
_REJECTED = pb.EVENT_STATUS_REJECTED

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)


class AdEventServicer:
    def __init__(
        self,
        pipeline: Pipeline,
        validator: EventValidator,
        stats: IngestStats,
        serving: ServingState,
        *,
        server: ServerSettings,
        default_ack: AckMode,
        store_type: str,
    ) -> None:
        self._pipeline = pipeline
        self._validator = validator
        self._stats = stats
        self._serving = serving
        self._max_batch_events = server.max_batch_events
        self._max_message_bytes = server.max_message_bytes
        self._default_ack = _ACK_FROM_SETTING[default_ack]
        self._store_type = store_type
        self._ids = EventIdGenerator()

    # -- request decoding -----------------------------------------------------
    def decoding(
        self,
        request_type: type[RequestT],
        method: Callable[
            [RequestT, grpc.aio.ServicerContext[RequestT, ResponseT]], Awaitable[ResponseT]
        ],
    ) -> Callable[[bytes, grpc.aio.ServicerContext[RequestT, ResponseT]], Awaitable[ResponseT]]:
        """Wrap a method to take the raw request bytes; bad bytes -> INVALID_ARGUMENT."""
        limit = self._max_message_bytes
        name = request_type.DESCRIPTOR.full_name

        async def handle(
            raw: bytes, context: grpc.aio.ServicerContext[RequestT, ResponseT]
        ) -> ResponseT:
            if len(raw) > limit:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request of {len(raw)} bytes exceeds server.max_message_bytes={limit}",
                )
            try:
                request = request_type.FromString(raw)
            except DecodeError as error:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {name}: {error}"
                )
            return await method(request, context)

        return handle

    # -- RPCs ------------------------------------------------------------------------
    async def SendAdEvent(
        self,
        request: pb.SendAdEventRequest,
        context: grpc.aio.ServicerContext[pb.SendAdEventRequest, pb.SendAdEventResponse],
    ) -> pb.SendAdEventResponse:
        stats = self._stats
        stats.received += 1
        ack_mode = await self._ack_mode(request.ack_mode, 1, context)
        if not request.HasField("event"):
            stats.rejected_invalid += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event: required")
        event = request.event
        now = time.time()
        problem = self._validator.problem(event, now)
        if problem is not None:
            stats.rejected_invalid += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        event_id = event.event_id or self._ids.new_id()
        record = to_record(event, event_id, format_epoch(now))
        await self._admit([record], request.ByteSize(), ack_mode, context)
        return pb.SendAdEventResponse(event_id=event_id, status=_ACCEPTED, ack_mode=ack_mode)

    async def SendAdEventBatch(
        self,
        request: pb.SendAdEventBatchRequest,
        context: grpc.aio.ServicerContext[pb.SendAdEventBatchRequest, pb.SendAdEventBatchResponse],
    ) -> pb.SendAdEventBatchResponse:
        events = request.events
        count = len(events)
        if count == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events: the batch is empty")
        if count > self._max_batch_events:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"events: {count} events exceed server.max_batch_events={self._max_batch_events}",
            )
        stats = self._stats
        stats.received += count
        ack_mode = await self._ack_mode(request.ack_mode, count, context)
        response = pb.SendAdEventBatchResponse(ack_mode=ack_mode)
        add_result = response.results.add
        records: list[EventRecord] = []
        now = time.time()
        received_at = format_epoch(now)
        problem_of = self._validator.problem
        new_id = self._ids.new_id
        for index, event in enumerate(events):
            problem = problem_of(event, now)
            if problem is None:
                event_id = event.event_id or new_id()
                records.append(to_record(event, event_id, received_at))
                add_result(index=index, event_id=event_id, status=_ACCEPTED)
            else:
                add_result(index=index, event_id=event.event_id, status=_REJECTED, reason=problem)
        rejected = count - len(records)
        stats.rejected_invalid += rejected
        if records:
            # Byte cost in proportion to the accepted share of the request.
            nbytes = request.ByteSize() * len(records) // count
            await self._admit(records, nbytes, ack_mode, context)
        response.accepted_count = len(records)
        response.rejected_count = rejected
        return response

    async def HealthCheck(
        self,
        request: pb.HealthCheckRequest,
        context: grpc.aio.ServicerContext[pb.HealthCheckRequest, pb.HealthCheckResponse],
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
            pending_events=pipeline.pending_events,
            pending_bytes=pipeline.pending_bytes,
            store_type=self._store_type,
            store_healthy=store.healthy,
            store_detail=store.detail,
            version=__version__,
            server_time=server_time,
        )

    # -- helpers -----------------------------------------------------------------
    async def _ack_mode(  # noqa: RET503 (context.abort never returns)
        self, requested: int, count: int, context: grpc.aio.ServicerContext[RequestT, ResponseT]
    ) -> pb.AckMode.ValueType:
        if requested == pb.ACK_MODE_UNSPECIFIED:
            return self._default_ack
        if requested in (pb.ACK_MODE_ACCEPTED, pb.ACK_MODE_COMMITTED):
            return pb.AckMode.ValueType(requested)
        self._stats.rejected_invalid += count
        if requested == pb.ACK_MODE_DURABLE:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ack_mode: ACK_MODE_DURABLE needs the write-ahead log, which this version "
                "does not have; use ACK_MODE_ACCEPTED or ACK_MODE_COMMITTED",
            )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"ack_mode: unknown value {requested}"
        )

    async def _admit(
        self,
        records: list[EventRecord],
        nbytes: int,
        ack_mode: pb.AckMode.ValueType,
        context: grpc.aio.ServicerContext[RequestT, ResponseT],
    ) -> None:
        try:
            done = self._pipeline.submit(
                records, nbytes, wait_for_commit=ack_mode == pb.ACK_MODE_COMMITTED
            )
        except PipelineClosedError as error:
            self._stats.rejected_unavailable += len(records)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{error}; retry on another replica")
        except AdmissionError as error:
            self._stats.rejected_overload += len(records)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        if done is None:
            return
        try:
            await asyncio.shield(done)
        except CommitFailedError as error:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the store refused the events past the retry bound; they were dead-lettered "
                f"(retrying with the same event_ids is safe): {error}",
            )
