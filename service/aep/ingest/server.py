"""The grpc.aio server: AdEventService, grpc.health.v1 and reflection on one port."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from aep.ingest.deadlines import ReadDeadlines
from aep.ingest.reflection import enable_reflection
from aep.ingest.servicer import AdEventServicer
from aep.observability.health import ServingState
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ServerSettings

AD_EVENT_SERVICE = pb.DESCRIPTOR.services_by_name["AdEventService"]
AD_EVENT_SERVICE_NAME: str = AD_EVENT_SERVICE.full_name
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


class BindError(Exception):
    pass


def _channel_options(settings: ServerSettings) -> list[tuple[str, int]]:
    def ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    return [
        # The servicer refuses requests over max_message_bytes with
        # INVALID_ARGUMENT naming the limit; gRPC core cuts anything over twice
        # that before it is read whole.
        ("grpc.max_receive_message_length", 2 * settings.max_message_bytes),
        ("grpc.max_send_message_length", 2 * settings.max_message_bytes),
        # A fixed receive window per call (BDP probing would grow it to several
        # MB): a client that sends while the server does not read, because it
        # cannot deliver the acks, gets no further than this.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", settings.receive_window),
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", ms(settings.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace)),
    ]


Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the stubs


async def _read_request(context: Context, deadlines: ReadDeadlines | None) -> Any:
    """The one request message of a unary call, read within the deadline.

    gRPC core has no deadline for receiving a message: a client that declares
    a large message and stops sending would hold the call forever. Unary
    methods are therefore served as stream-unary ones (the same wire format),
    so that the handler itself reads the request, with a deadline.
    """
    if deadlines is None:
        request = await context.read()
    else:
        try:
            request = await deadlines.within(context.read())
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the request did not arrive whole within "
                f"server.request_read_timeout={deadlines.timeout_s:g}s",
            )
    if request is grpc.aio.EOF:  # type: ignore[attr-defined]  # missing in grpc-stubs
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
    return request


def _reading_with_deadline(handler: Handler, deadlines: ReadDeadlines | None) -> Handler:
    """The same method, its request read by the handler within the deadline (see _read_request)."""
    if handler.request_streaming:
        return handler
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if not handler.response_streaming:
        unary: Any = handler.unary_unary  # async here; grpc-stubs type the sync API

        async def unary_call(requests: object, context: Context) -> Any:
            return await unary(await _read_request(context, deadlines), context)

        return grpc.stream_unary_rpc_method_handler(unary_call, deserializer, serializer)
    streaming: Any = handler.unary_stream
    if inspect.isasyncgenfunction(streaming):

        async def stream_call(requests: object, context: Context) -> AsyncIterator[Any]:
            async for response in streaming(await _read_request(context, deadlines), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_call, deserializer, serializer)

    async def writing_call(requests: object, context: Context) -> None:
        await streaming(await _read_request(context, deadlines), context)

    return grpc.stream_stream_rpc_method_handler(writing_call, deserializer, serializer)


class _CallLimit:
    """AdEventService calls in progress; past server.max_concurrent_rpcs one is refused.

    Counted here rather than by grpc's maximum_concurrent_rpcs, which counts
    every call on the port: 1,000 idle streams would make kubelet's health
    checks fail with RESOURCE_EXHAUSTED.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    async def enter(self, context: Context) -> None:
        if self.limit and self.active >= self.limit:
            await self._refuse(context)
        self.active += 1

    async def _refuse(self, context: Context) -> NoReturn:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server.max_concurrent_rpcs={self.limit} AdEventService calls are in progress; "
            "retry later",
        )
        raise AssertionError("unreachable: abort raises")

    def leave(self) -> None:
        self.active -= 1


def _limited(handler: Handler, limit: _CallLimit) -> Handler:
    """The same stream-request method, counted against limit while it runs."""
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if not handler.response_streaming:
        unary: Any = handler.stream_unary

        async def unary_call(requests: AsyncIterator[Any], context: Context) -> Any:
            await limit.enter(context)
            try:
                return await unary(requests, context)
            finally:
                limit.leave()

        return grpc.stream_unary_rpc_method_handler(unary_call, deserializer, serializer)
    streaming: Any = handler.stream_stream

    async def stream_call(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        await limit.enter(context)
        try:
            async for response in streaming(requests, context):
                yield response
        finally:
            limit.leave()

    return grpc.stream_stream_rpc_method_handler(stream_call, deserializer, serializer)


def _serialize(response: bytes | Message) -> bytes:
    # Some RPCs answer bytes the servicer serialised itself (aep.ingest.responses).
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def _ad_event_handler(
    servicer: AdEventServicer, settings: ServerSettings, deadlines: ReadDeadlines | None
) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler per method of the service descriptor: the servicer's method of that
    name, by the method's kind. Raw bytes in (no request_deserializer): the servicer
    decodes and answers malformed input with INVALID_ARGUMENT."""
    handlers: dict[str, Handler] = {}
    for method in AD_EVENT_SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, response_serializer=_serialize
            )
        elif not method.client_streaming and not method.server_streaming:
            request_type = message_factory.GetMessageClass(method.input_type)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                servicer.unary(request_type, behaviour), response_serializer=_serialize
            )
        else:
            raise NotImplementedError(f"{method.full_name}: one-sided streaming is not served")
    limit = _CallLimit(settings.max_concurrent_rpcs)
    return grpc.method_handlers_generic_handler(
        AD_EVENT_SERVICE_NAME,
        {
            name: _limited(_reading_with_deadline(handler, deadlines), limit)
            for name, handler in handlers.items()
        },
    )


class _Registrations:
    """Stands in for the server while grpc's generated code registers a service."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers come to add_registered_method_handlers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.services[service] = handlers


def _health_handlers(
    serving: ServingState, deadlines: ReadDeadlines | None
) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
    """grpc.health.v1, its requests read with server.request_read_timeout too."""
    registrations = _Registrations()
    health_pb2_grpc.add_HealthServicer_to_server(serving.servicer, registrations)
    assert HEALTH_SERVICE_NAME in registrations.services, registrations.services.keys()
    return tuple(
        grpc.method_handlers_generic_handler(
            service,
            {
                name: _reading_with_deadline(handler, deadlines)
                for name, handler in handlers.items()
            },
        )
        for service, handlers in registrations.services.items()
    )


def build_server(
    settings: ServerSettings,
    servicer: AdEventServicer,
    serving: ServingState,
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """The server, bound but not started, and the port it bound (for port 0)."""
    # No maximum_concurrent_rpcs: AdEventService calls are limited by
    # _CallLimit, and health checks and reflection not at all.
    server = grpc.aio.server(options=_channel_options(settings), interceptors=interceptors)
    # One sweeper for the request reads of every service (0: no deadline).
    timeout = settings.request_read_timeout
    deadlines = ReadDeadlines(timeout) if timeout else None
    server.add_generic_rpc_handlers((_ad_event_handler(servicer, settings, deadlines),))
    server.add_generic_rpc_handlers(_health_handlers(serving, deadlines))
    enable_reflection(server, (AD_EVENT_SERVICE_NAME, HEALTH_SERVICE_NAME))
    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise BindError(f"server.port: cannot listen on {address}: {error}") from error
    if port == 0:
        raise BindError(f"server.port: cannot listen on {address}")
    return server, port
