"""Which Kafka client for the Kafka store: aiokafka against confluent-kafka's asyncio uses.

Not a test: a bounded benchmark on loopback against its own Tansu broker (the
one the tests use). Produces N events (stored-form JSON lines, key event_id) in
batches of B through each client, with W concurrent writers as the pipeline
runs them, each batch awaited until the broker acknowledged every record
(acks=all), as the store's write_batch must. Prints events/s and the process CPU
time per event (time.process_time: every thread of this process, the clients'
own I/O threads included; the broker is another process and is not counted).

Clients:
- aiokafka: AIOKafkaProducer.send() per record, then gather the futures. Without
  the idempotent producer: aiokafka 0.14 sends InitProducerId v0, which Tansu 0.6
  refuses (it needs the v3+ producer id fields), so aiokafka cannot produce
  idempotently to the test broker at all.
- confluent-aio: confluent_kafka.aio.AIOProducer (2.16): produce() per record, then
  flush() and gather the futures.
- confluent-poll: confluent_kafka.Producer.produce() per record on the event loop,
  delivery reports served by one poll thread, one asyncio future per batch
  (what aep.storage.kafka does).
- confluent-batch: the same with produce_batch() (one C call per batch).

    .venv/bin/python tests/benchmarks/bench_kafka_clients.py [--events 200000] [--batch 500]
        [--writers 4] [--compression none] [--max-seconds 60] [--clients a,b,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.helpers

from aep.events.block import EventBatch
from tests.benchmarks.bench_stores import cut, make_events, write_concurrently
from tests.helpers.servers import KafkaServer

Write = Callable[[EventBatch], Awaitable[None]]
Close = Callable[[], Awaitable[None]]


def make_batches(count: int, size: int, run: str) -> list[EventBatch]:
    return cut(make_events(count, run), size)


async def aiokafka_client(servers: str, topic: str, compression: str) -> tuple[Write, Close]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=servers,
        acks="all",
        enable_idempotence=False,  # see the module docstring
        compression_type=None if compression == "none" else compression,
        linger_ms=5,
    )
    await producer.start()

    async def write(batch: EventBatch) -> None:
        send = producer.send
        futures = [
            await send(topic, value=line, key=event_id.encode())
            for event_id, line in zip(batch.event_ids, batch.lines(), strict=True)
        ]
        await asyncio.gather(*futures)

    return write, producer.stop


def confluent_config(servers: str, compression: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": servers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": compression,
        "linger.ms": 5,
        "partitioner": "murmur2_random",
    }


async def confluent_aio_client(servers: str, topic: str, compression: str) -> tuple[Write, Close]:
    from confluent_kafka.aio import AIOProducer

    producer = AIOProducer(confluent_config(servers, compression), batch_size=500)

    async def write(batch: EventBatch) -> None:
        produce = producer.produce
        futures = [
            await produce(topic, value=line, key=event_id.encode())
            for event_id, line in zip(batch.event_ids, batch.lines(), strict=True)
        ]
        await producer.flush()
        await asyncio.gather(*futures)

    return write, producer.close


class _Delivery:
    """One batch's delivery reports: the future is resolved once all arrived."""

    __slots__ = ("error", "future", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = count
        self.error: Any = None

    def __call__(self, error: Any, _message: Any) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.future.done():
            if self.error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(RuntimeError(str(self.error)))


async def confluent_poll_client(
    servers: str, topic: str, compression: str, *, batch_call: bool = False
) -> tuple[Write, Close]:
    from confluent_kafka import Producer

    producer = Producer(confluent_config(servers, compression))
    running = threading.Event()
    running.set()

    def poll() -> None:
        while running.is_set():
            producer.poll(0.05)

    poller = threading.Thread(target=poll, name="kafka-poll", daemon=True)
    poller.start()
    loop = asyncio.get_running_loop()

    async def write(batch: EventBatch) -> None:
        delivery = _Delivery(loop, batch.count)
        lines = batch.lines()
        if batch_call:
            messages = [
                {"key": event_id.encode(), "value": line}
                for event_id, line in zip(batch.event_ids, lines, strict=True)
            ]
            producer.produce_batch(topic, messages, on_delivery=delivery)
            failed = [m for m in messages if "_error" in m]
            for message in failed:
                delivery(message["_error"], None)
        else:
            produce = producer.produce
            for event_id, line in zip(batch.event_ids, lines, strict=True):
                produce(topic, line, event_id.encode(), on_delivery=delivery)
        await delivery.future

    async def close() -> None:
        await asyncio.to_thread(producer.flush, 30)
        running.clear()
        await asyncio.to_thread(poller.join)

    return write, close


async def confluent_batch_client(servers: str, topic: str, compression: str) -> tuple[Write, Close]:
    return await confluent_poll_client(servers, topic, compression, batch_call=True)


CLIENTS: dict[str, Callable[[str, str, str], Awaitable[tuple[Write, Close]]]] = {
    "aiokafka": aiokafka_client,
    "confluent-aio": confluent_aio_client,
    "confluent-poll": confluent_poll_client,
    "confluent-batch": confluent_batch_client,
}


async def run_client(
    name: str,
    server: KafkaServer,
    batches: list[EventBatch],
    writers: int,
    args: argparse.Namespace,
) -> str:
    topic = f"bench-{name}-{secrets.token_hex(3)}"
    server.create_topic(topic, partitions=3)
    write, close = await CLIENTS[name](server.bootstrap_servers, topic, args.compression)
    # Warm-up (connections, metadata, producer id), not measured.
    await write(batches[0])

    async def counted(batch: EventBatch) -> int:
        await write(batch)
        return batch.count

    cpu_started = time.process_time()
    started = time.perf_counter()
    written = 0
    try:
        written = await write_concurrently(
            counted, batches[1:], writers, started + args.max_seconds
        )
    finally:
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        await close()
    cut = " (time bound hit)" if written < sum(b.count for b in batches[1:]) else ""
    return (
        f"{name:<16} {written:>8} events {elapsed:7.2f} s {written / elapsed:>9,.0f} events/s"
        f"  {cpu / max(written, 1) * 1e6:6.1f} CPU-µs/event{cut}"
    )


def _version(version: Any) -> str:
    """confluent_kafka.version() is a (text, number) pair in some releases, text in others."""
    return str(version[0] if isinstance(version, tuple) else version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per client")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    names = [name for name in args.clients.split(",") if name]
    for name in names:
        if name not in CLIENTS:
            parser.error(f"unknown client {name!r}; known: {', '.join(CLIENTS)}")
    import aiokafka
    import confluent_kafka

    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, aiokafka {aiokafka.__version__}, "
        f"confluent-kafka {_version(confluent_kafka.version())} (librdkafka "
        f"{_version(confluent_kafka.libversion())}), broker Tansu 0.6 (memory), loopback"
    )
    print(
        f"{args.events} events in batches of {args.batch}, {args.writers} writers, "
        f"acks=all, compression {args.compression}, linger 5ms, 3 partitions"
    )
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as directory:
        server = KafkaServer(Path(directory))
        server.start()
        try:
            for name in names:
                batches = make_batches(args.events + args.batch, args.batch, name)
                print(
                    asyncio.run(run_client(name, server, batches, args.writers, args)), flush=True
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
