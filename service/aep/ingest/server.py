"""The grpc.aio server: AdEventService, grpc.health.v1 and reflection on one port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

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
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", ms(settings.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace)),
    ]


def _serialize(response: bytes | Message) -> bytes:
    # Some RPCs answer bytes the servicer serialised itself (aep.ingest.responses).
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def _ad_event_handler(servicer: AdEventServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler per method of the service descriptor: the servicer's method of that
    name, by the method's kind. Raw bytes in (no request_deserializer): the servicer
    decodes and answers malformed input with INVALID_ARGUMENT."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
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
    return grpc.method_handlers_generic_handler(AD_EVENT_SERVICE_NAME, handlers)


def build_server(
    settings: ServerSettings,
    servicer: AdEventServicer,
    serving: ServingState,
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """The server, bound but not started, and the port it bound (for port 0)."""
    server = grpc.aio.server(
        options=_channel_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        interceptors=interceptors,
    )
    server.add_generic_rpc_handlers((_ad_event_handler(servicer),))
    health_pb2_grpc.add_HealthServicer_to_server(serving.servicer, server)
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
