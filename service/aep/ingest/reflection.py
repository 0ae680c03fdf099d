"""Server reflection on both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcio-reflection 1.85 ships only v1alpha. The v1 service has the same
messages under a new package, so its wire format is identical: the v1 method
is served by the v1alpha servicer with v1alpha (de)serialisers, and a v1
file descriptor, derived from the v1alpha one by renaming the package, is
added to the descriptor pool so that `describe grpc.reflection.v1...` works too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{_V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(v1alpha_pb2.DESCRIPTOR.serialized_pb)
    file_proto.name = "grpc/reflection/v1/reflection.proto"
    file_proto.package = _V1_PACKAGE
    old_prefix, new_prefix = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in file_proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name.removeprefix(old_prefix)
    for service in file_proto.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type.removeprefix(old_prefix)
            method.output_type = new_prefix + method.output_type.removeprefix(old_prefix)
    file_proto.options.Clear()
    pool.Add(file_proto)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) listing service_names and itself."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    # grpc_reflection exports its asyncio servicer as `reflection.aio` at run time only.
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)  # type: ignore[attr-defined]
    stream_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": stream_handler})
            for name in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
        )
    )
