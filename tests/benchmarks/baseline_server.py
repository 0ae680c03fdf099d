"""The bare-gRPC limit: a grpc.aio server with our proto whose handlers only count.

Same service and method names and the same request parsing as ad-event-processor,
no validation, no pipeline, no store. Started by bench_ingest.py.

With --work, the handlers also do the least per-event Python any ingest
service must do, to show where pure Python's floor lies:
  read    read every field of every event once
  record  read, build the stored form (a dict, as ad-event-processor stores
          it) and encode the request's records with one orjson call
No validation, no ids, no per-event results, no pipeline, no write.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import orjson

from aep.events.event_types import EVENT_TYPE_NAMES
from aep.events.schema import format_epoch, format_timestamp
from aep.proto.adevents.v1 import ad_events_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


def read_fields(events: Iterable[pb.AdEvent]) -> None:
    fields = []
    for event in events:
        fields = [
            event.event_id,
            event.user_id,
            event.ad_id,
            event.event_type,
            event.timestamp.seconds,
            event.timestamp.nanos,
            event.campaign_id,
            event.creative_id,
            event.placement_id,
            event.publisher_id,
            event.price_micros,
            event.currency,
            event.attributes,
        ]
    del fields


def build_records(events: Iterable[pb.AdEvent]) -> None:
    received_at = format_epoch(time.time())
    records = []
    for event in events:
        timestamp = event.timestamp
        records.append(
            {
                "event_id": event.event_id,
                "user_id": event.user_id,
                "ad_id": event.ad_id,
                "event_type": EVENT_TYPE_NAMES[event.event_type],
                "timestamp": format_timestamp(timestamp.seconds, timestamp.nanos),
                "received_at": received_at,
                "campaign_id": event.campaign_id,
                "creative_id": event.creative_id,
                "placement_id": event.placement_id,
                "publisher_id": event.publisher_id,
                "price_micros": event.price_micros,
                "currency": event.currency,
                "attributes": dict(event.attributes),
            }
        )
    orjson.dumps(records)


WORK: dict[str, Callable[[Iterable[pb.AdEvent]], None]] = {
    "count": lambda events: None,
    "read": read_fields,
    "record": build_records,
}


class CountingServicer:
    def __init__(self, work: Callable[[Iterable[pb.AdEvent]], None]) -> None:
        self.events = 0
        self.work = work

    async def SendAdEvent(
        self, request: pb.SendAdEventRequest, context: Context
    ) -> pb.SendAdEventResponse:
        self.events += 1
        self.work((request.event,))
        return pb.SendAdEventResponse(status=pb.EVENT_STATUS_ACCEPTED)

    async def SendAdEventBatch(
        self, request: pb.SendAdEventBatchRequest, context: Context
    ) -> pb.SendAdEventBatchResponse:
        count = len(request.events)
        self.events += count
        self.work(request.events)
        return pb.SendAdEventBatchResponse(accepted_count=count)

    async def StreamAdEvents(
        self, requests: AsyncIterator[pb.StreamAdEventsRequest], context: Context
    ) -> AsyncIterator[pb.StreamAdEventsResponse]:
        async for chunk in requests:
            count = len(chunk.events)
            self.events += count
            self.work(chunk.events)
            yield pb.StreamAdEventsResponse(sequence=chunk.sequence, accepted_count=count)


async def serve(port: int, work: str) -> None:
    servicer = CountingServicer(WORK[work])
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
    parser.add_argument("--work", choices=sorted(WORK), default="count")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.work))


if __name__ == "__main__":
    main()
