"""The bare-gRPC limit: a grpc.aio server with our proto whose handlers only count.

Same service and method names and the same request parsing as ad-event-processor,
no validation, no pipeline, no store. Started by bench_ingest.py.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aep.proto.adevents.v1 import ad_events_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


class CountingServicer:
    def __init__(self) -> None:
        self.events = 0

    async def SendAdEvent(
        self, request: pb.SendAdEventRequest, context: Context
    ) -> pb.SendAdEventResponse:
        self.events += 1
        return pb.SendAdEventResponse(status=pb.EVENT_STATUS_ACCEPTED)

    async def SendAdEventBatch(
        self, request: pb.SendAdEventBatchRequest, context: Context
    ) -> pb.SendAdEventBatchResponse:
        count = len(request.events)
        self.events += count
        return pb.SendAdEventBatchResponse(accepted_count=count)

    async def StreamAdEvents(
        self, requests: AsyncIterator[pb.StreamAdEventsRequest], context: Context
    ) -> AsyncIterator[pb.StreamAdEventsResponse]:
        async for chunk in requests:
            count = len(chunk.events)
            self.events += count
            yield pb.StreamAdEventsResponse(sequence=chunk.sequence, accepted_count=count)


async def serve(port: int) -> None:
    servicer = CountingServicer()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    handlers = {
        "SendAdEvent": grpc.unary_unary_rpc_method_handler(
            servicer.SendAdEvent,
            request_deserializer=pb.SendAdEventRequest.FromString,
            response_serializer=pb.SendAdEventResponse.SerializeToString,
        ),
        "SendAdEventBatch": grpc.unary_unary_rpc_method_handler(
            servicer.SendAdEventBatch,
            request_deserializer=pb.SendAdEventBatchRequest.FromString,
            response_serializer=pb.SendAdEventBatchResponse.SerializeToString,
        ),
        "StreamAdEvents": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAdEvents,
            request_deserializer=pb.StreamAdEventsRequest.FromString,
            response_serializer=pb.StreamAdEventsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("adevents.v1.AdEventService", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
