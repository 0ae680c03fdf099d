"""Store throughput and batch latency: N events through each store's write_batch.

Not a test: a bounded benchmark on loopback. Starts its own redis-server
(appendonly everysec, as the outage tests run it), nx-27017 (SQLite file) and
Tansu (Kafka protocol, in memory; acks=all, idempotent producer, lz4),
writes into a temporary directory for the file store (fsync per batch, the
default), and prints events/s and per-batch latency (p50/p99) per store and
batch size, with `batch.worker_pool_size` concurrent writers like the pipeline;
then the --together stores (default mongodb,redis,kafka) written at once, every
batch to each with its own writers, as the lanes of `database.type=<list>` run:
events/s stored everywhere, and each store's own rate beside it.
Then `redis-benchmark -P 100 -t set -n 200000 -q` on the same Redis, as the
ceiling of what that Redis takes on this machine.

    .venv/bin/python tests/benchmarks/bench_stores.py [--events 50000] [--batch-sizes 100,500,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.helpers

from aep.events.block import EventBatch
from aep.events.schema import EventRecord, format_epoch
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.storage.base import EventStore
from tests.helpers.backends import Backend
from tests.helpers.servers import KafkaServer, MongoServer, RedisServer
from tests.helpers.support import batch_of, stored_forms, valid_event


def make_events(count: int, run: str) -> list[EventRecord]:
    template = valid_event(attributes={"os": "ios", "geo": "FR"}, campaign_id="camp-1")
    events = []
    for i in range(count):
        event = pb.AdEvent()
        event.CopyFrom(template)
        event.event_id = f"{run}-{i:08d}"
        events.append(event)
    return stored_forms(events, format_epoch(time.time()))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def write_concurrently(
    write: Callable[[EventBatch], Awaitable[int]],
    batches: Iterable[EventBatch],
    writers: int,
    deadline: float,
    latencies: list[float] | None = None,
) -> int:
    """`writers` concurrent writers take the batches in turn until `deadline`
    (perf_counter); returns the events written (what `write` returned, summed)."""
    next_batch = iter(batches)
    written = 0

    async def writer() -> None:
        nonlocal written
        for batch in next_batch:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            count = await write(batch)
            if latencies is not None:
                latencies.append(time.perf_counter() - started)
            written += count  # after the await: `written += await ...` would lose updates

    await asyncio.gather(*(writer() for _ in range(writers)))
    return written


def store_writer(store: EventStore) -> Callable[[EventBatch], Awaitable[int]]:
    async def write(batch: EventBatch) -> int:
        return (await store.write_batch(batch)).written

    return write


def cut(events: list[EventRecord], batch_size: int) -> list[EventBatch]:
    return [batch_of(events[i : i + batch_size]) for i in range(0, len(events), batch_size)]


async def run_one(
    backend: Backend, events: list[EventRecord], batch_size: int, writers: int, budget_s: float
) -> tuple[int, float, list[float]]:
    """(events written, seconds, per-batch latencies)."""
    store = backend.make_store(writers)
    await store.open()
    batches = cut(events, batch_size)
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        written = await write_concurrently(
            store_writer(store), batches, writers, started + budget_s, latencies
        )
    finally:
        elapsed = time.perf_counter() - started
        await store.close()
    return written, elapsed, latencies


async def run_together(
    backends: dict[str, Backend],
    events: list[EventRecord],
    batch_size: int,
    writers: int,
    budget_s: float,
) -> tuple[float, dict[str, tuple[int, float]]]:
    """Every batch to every store, each store with its own writers, as the lanes run.

    Returns (seconds until the slowest store finished, {store: (written, its seconds)}).
    """
    batches = cut(events, batch_size)
    stores = {kind: backend.make_store(writers) for kind, backend in backends.items()}
    await asyncio.gather(*(store.open() for store in stores.values()))
    started = time.perf_counter()

    async def lane(store: EventStore) -> tuple[int, float]:
        try:
            written = await write_concurrently(
                store_writer(store), batches, writers, started + budget_s
            )
            return written, time.perf_counter() - started
        finally:
            await store.close()

    results = await asyncio.gather(*(lane(store) for store in stores.values()))
    return time.perf_counter() - started, dict(zip(backends, results, strict=True))


@contextmanager
def servers(directory: Path) -> Iterator[tuple[RedisServer, MongoServer, KafkaServer]]:
    redis_server = RedisServer(directory / "redis", append_only=True)
    mongo_server = MongoServer(directory / "mongo", file_backed=True)
    kafka_server = KafkaServer(directory / "kafka")
    redis_server.start()
    try:
        mongo_server.start()
        try:
            kafka_server.start()
            try:
                yield redis_server, mongo_server, kafka_server
            finally:
                kafka_server.stop()
        finally:
            mongo_server.stop()
    finally:
        redis_server.stop()


async def benchmark_stores(
    args: argparse.Namespace,
    directory: Path,
    redis_server: RedisServer,
    mongo: MongoServer,
    kafka: KafkaServer,
) -> None:
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    print(
        f"{args.events} events per run, {args.writers} concurrent writers, "
        f"at most {args.max_seconds}s per run"
    )
    print(f"{'store':<8} {'batch':>6} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'batches':>8}")
    for kind in args.stores.split(","):
        for batch_size in batch_sizes:
            backend = Backend(
                kind,
                directory / f"{kind}-{batch_size}",
                redis=redis_server,
                mongo=mongo,
                kafka=kafka,
            )
            if kind == "kafka":
                kafka.create_topic(backend.name)
            events = make_events(args.events, f"{kind}{batch_size}")
            written, elapsed, latencies = await run_one(
                backend, events, batch_size, args.writers, args.max_seconds
            )
            print(
                f"{kind:<8} {batch_size:>6} {written / elapsed:>10,.0f} "
                f"{statistics.median(latencies) * 1e3:>8.2f} "
                f"{percentile(latencies, 0.99) * 1e3:>8.2f} {len(latencies):>8}",
                flush=True,
            )
    if not args.together:
        return
    group = args.together.split(",")
    print(f"together: every batch to each of {', '.join(group)}, {args.writers} writers each")
    print(f"{'batch':>6} {'events/s':>10}  per store (events/s on its own clock)")
    for batch_size in batch_sizes:
        backends = {
            kind: Backend(
                kind,
                directory / f"together-{kind}-{batch_size}",
                redis=redis_server,
                mongo=mongo,
                kafka=kafka,
            )
            for kind in group
        }
        if "kafka" in backends:
            kafka.create_topic(backends["kafka"].name)
        events = make_events(args.events, f"together{batch_size}")
        elapsed, per_store = await run_together(
            backends, events, batch_size, args.writers, args.max_seconds
        )
        # Every store got every event only if none ran out of --max-seconds.
        everywhere = min(written for written, _seconds in per_store.values())
        stores = "  ".join(
            f"{kind} {written / seconds:,.0f}" for kind, (written, seconds) in per_store.items()
        )
        print(f"{batch_size:>6} {everywhere / elapsed:>10,.0f}  {stores}", flush=True)


def redis_ceiling(redis_server: RedisServer) -> str:
    redis_benchmark = shutil.which("redis-benchmark")
    if redis_benchmark is None:
        return "redis-benchmark not found (Debian package redis-tools)"
    command = [redis_benchmark, "-h", "127.0.0.1", "-p", str(redis_server.port)]
    command += ["-P", "100", "-t", "set", "-n", "200000", "-q"]
    ceiling = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    lines = [line for line in ceiling.stdout.replace("\r", "\n").splitlines() if "SET" in line]
    return f"ceiling, same Redis: redis-benchmark -P 100 -t set -n 200000 -q: {lines[-1].strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-sizes", default="100,500,2000")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--stores", default="file,redis,mongodb,kafka")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument(
        "--together",
        default="mongodb,redis,kafka",
        help="stores written together, each batch to all (as database.type=<list>); '' skips",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="aep-bench-") as directory,
        servers(Path(directory)) as (redis_server, mongo_server, kafka_server),
    ):
        asyncio.run(
            benchmark_stores(args, Path(directory), redis_server, mongo_server, kafka_server)
        )
        print(redis_ceiling(redis_server))


if __name__ == "__main__":
    main()
