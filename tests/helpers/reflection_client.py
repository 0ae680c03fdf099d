"""A grpcurl-like client: everything it knows about the server comes from server reflection.

It uses no generated code of the service: message types are built from the file
descriptors the server returns, requests are parsed from JSON and responses
printed as JSON, as `grpcurl -plaintext -d '{...}' HOST:PORT pkg.Service/Method`
does. grpcurl asks grpc.reflection.v1 first and falls back to v1alpha.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


class ReflectionClient:
    def __init__(
        self, channel: grpc.Channel, reflection_service: str = REFLECTION_SERVICES[0]
    ) -> None:
        self._channel = channel
        # v1 and v1alpha messages are the same on the wire.
        self._info = channel.stream_stream(
            f"/{reflection_service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        self.pool = descriptor_pool.DescriptorPool()
        self._files: set[str] = set()

    def _ask(self, request: reflection_pb2.ServerReflectionRequest) -> Any:
        (response,) = list(self._info(iter([request]), timeout=10))
        if response.HasField("error_response"):
            raise LookupError(response.error_response.error_message)
        return response

    def list_services(self) -> list[str]:
        response = self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return sorted(service.name for service in response.list_services_response.service)

    def _load_symbol(self, symbol: str) -> None:
        response = self._ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        protos = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        # Add dependencies before the files that import them.
        pending = [proto for proto in protos if proto.name not in self._files]
        while pending:
            ready = [p for p in pending if all(dep in self._files for dep in p.dependency)]
            if not ready:
                missing = {dep for p in pending for dep in p.dependency} - self._files
                raise LookupError(f"reflection did not return {sorted(missing)}")
            for proto in ready:
                self.pool.Add(proto)
                self._files.add(proto.name)
                pending.remove(proto)

    def describe_service(self, service: str) -> list[str]:
        """Method names of a service, as `grpcurl describe` lists them."""
        self._load_symbol(service)
        return [method.name for method in self.pool.FindServiceByName(service).methods]

    def call(self, method: str, request_json: str = "{}") -> dict[str, Any]:
        """Call pkg.Service/Method with a JSON request; the JSON response."""
        service_name, method_name = method.split("/")
        self._load_symbol(service_name)
        descriptor = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(request_json, request_class())
        rpc = self._channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = rpc(request, timeout=10)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)
