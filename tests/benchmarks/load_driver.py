"""Drives one load shape against a server with pre-serialised requests.

Requests are built once and sent as raw bytes, so the driver spends its CPU
on gRPC, not on making events: both servers see the same bytes. Prints one
JSON line: events, seconds, per-RPC (or per-chunk) latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from aep.proto.adevents.v1 import ad_events_pb2 as pb

SERVICE = "/adevents.v1.AdEventService/"


def load_events(count: int) -> list[pb.AdEvent]:
    now = Timestamp()
    now.GetCurrentTime()
    return [
        pb.AdEvent(
            user_id=f"user-{index % 9973}",
            ad_id=f"ad-{index % 997}",
            event_type=(pb.EVENT_TYPE_IMPRESSION, pb.EVENT_TYPE_CLICK)[index % 2],
            timestamp=now,
            campaign_id=f"campaign-{index % 97}",
            publisher_id=f"publisher-{index % 31}",
        )
        for index in range(count)
    ]


def _percentile(values: list[float], fraction: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))] if values else 0.0


async def _unary(
    channel: grpc.aio.Channel,
    method: str,
    payload: bytes,
    rpcs: int,
    concurrent: int,
    interval_s: float,
    errors: dict[str, int],
) -> list[float]:
    """Closed loop (interval 0) or paced: one RPC start every interval_s."""
    call = channel.unary_unary(SERVICE + method, None, None)  # raw bytes both ways
    latencies: list[float] = []
    remaining = rpcs
    next_start = time.perf_counter()

    async def caller() -> None:
        nonlocal remaining, next_start
        while remaining > 0:
            remaining -= 1
            if interval_s:
                next_start += interval_s
                delay = next_start - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            started = time.perf_counter()
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(concurrent)))
    return latencies


async def _stream(
    channel: grpc.aio.Channel, payloads: list[bytes], chunks: int, streams: int, window: int
) -> list[float]:
    """Each stream keeps at most `window` chunks unacknowledged, as a real client
    would: without a bound the latencies would measure the transport's buffers."""
    method = channel.stream_stream(SERVICE + "StreamAdEvents", None, None)
    latencies: list[float] = []

    async def one_stream(count: int) -> None:
        call = method(None, timeout=60)  # requests are written with call.write
        sent: dict[int, float] = {}
        unacked = asyncio.Semaphore(window)

        async def writer() -> None:
            for sequence in range(1, count + 1):
                await unacked.acquire()
                sent[sequence] = time.perf_counter()
                await call.write(payloads[sequence % len(payloads)])
            await call.done_writing()

        task = asyncio.create_task(writer())
        received = 0
        async for _ack in call:
            received += 1
            latencies.append(time.perf_counter() - sent.pop(received))
            unacked.release()
        await task

    await asyncio.gather(*(one_stream(chunks // streams) for _ in range(streams)))
    return latencies


async def run(args: argparse.Namespace) -> dict[str, object]:
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(args.server, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        events = load_events(args.batch)
        errors: dict[str, int] = {}
        interval = args.batch / args.rate if args.rate else 0.0
        started = time.perf_counter()
        if args.shape == "unary":
            payload = pb.SendAdEventRequest(event=events[0]).SerializeToString()
            latencies = await _unary(
                channel, "SendAdEvent", payload, args.rpcs, args.concurrent, interval, errors
            )
            total = len(latencies)
        elif args.shape == "batch":
            payload = pb.SendAdEventBatchRequest(events=events).SerializeToString()
            latencies = await _unary(
                channel, "SendAdEventBatch", payload, args.rpcs, args.concurrent, interval, errors
            )
            total = len(latencies) * args.batch
        else:
            # The sequence number is the first field: one payload per sequence
            # would cost the driver; acks are matched by order instead.
            payloads = [pb.StreamAdEventsRequest(sequence=1, events=events).SerializeToString()]
            latencies = await _stream(
                channel, payloads, args.rpcs, args.concurrent, args.stream_window
            )
            total = (args.rpcs // args.concurrent) * args.concurrent * args.batch
        elapsed = time.perf_counter() - started
    return {
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "p50_ms": _percentile(latencies, 0.5) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--shape", choices=("unary", "batch", "stream"), required=True)
    parser.add_argument("--batch", type=int, default=1, help="events per request or chunk")
    parser.add_argument("--rpcs", type=int, required=True, help="requests (or chunks) in all")
    parser.add_argument("--concurrent", type=int, default=8, help="calls or streams in flight")
    parser.add_argument("--rate", type=float, default=0.0, help="paced events/s (0: closed loop)")
    parser.add_argument(
        "--stream-window", type=int, default=16, help="unacknowledged chunks per stream"
    )
    print(orjson.dumps(asyncio.run(run(parser.parse_args()))).decode())


if __name__ == "__main__":
    main()
