"""Lane isolation: the real server writing to several stores while one is paused.

Not a test: a bounded benchmark on loopback. Starts its own redis-server, Tansu
(Kafka protocol, in memory) and/or nx-27017 as --stores asks, and the server with
`database.type=<stores>`; client threads send batches as fast as the server takes
them. Three phases of --phase-seconds each: all stores up; --paused (default
redis) SIGSTOPped; resumed, until it caught up from its spill. Per phase it
prints each store's events/s from the server's own counters
(events_processed_total + events_duplicate_total, scraped from /metrics), the
ratio paused/unpaused for the other stores, the paused store's spill peak and
catch-up time, and at the end checks every acknowledged event is in the Redis
stream, the MongoDB collection and the file store exactly once (Kafka: the count
of records written, at least once).

    .venv/bin/python tests/benchmarks/bench_lanes.py [--stores file,redis,kafka] \\
        [--paused redis] [--phase-seconds 30] [--workers 4] [--batch 100] [--pause 0]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.helpers

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.backends import Backend
from tests.helpers.servers import ChildServer, KafkaServer, MongoServer, RedisServer
from tests.helpers.support import ServerProcess, stored_events
from tests.integration.test_store_outage import LoadSender, wait_for

_SAMPLE = re.compile(r'^(events_processed_total|events_duplicate_total)\{store="(\w+)"\} (\S+)$')


def store_counts(server: ServerProcess) -> dict[str, float]:
    """Events each store took (written + duplicates) so far."""
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5
    ).read()
    counts: dict[str, float] = {}
    for line in text.decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            name = match.group(2)
            counts[name] = counts.get(name, 0.0) + float(match.group(3))
    return counts


def health(server: ServerProcess) -> pb.HealthCheckResponse:
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        response: pb.HealthCheckResponse = pb_grpc.AdEventServiceStub(channel).HealthCheck(
            pb.HealthCheckRequest(), timeout=5
        )
        return response


def rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {name: (after.get(name, 0) - before.get(name, 0)) / seconds for name in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="file,redis,kafka")
    parser.add_argument("--paused", default="redis")
    parser.add_argument("--phase-seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds each worker waits between batches (0: as fast as the server takes them;"
        " e.g. 0.05 to stay under what nx-27017 writes with mongodb in --stores)",
    )
    parser.add_argument("--max-catch-up-seconds", type=float, default=120.0)
    args = parser.parse_args()
    stores = args.stores.split(",")
    directory = Path(tempfile.mkdtemp(prefix="bench-lanes-"))
    children: dict[str, ChildServer] = {}
    env: dict[str, str] = {}
    redis_backend = None
    if "redis" in stores:
        redis = RedisServer(directory / "redis")
        children["redis"] = redis
        redis.start()
        redis_backend = Backend("redis", directory, redis=redis)
        env.update(redis_backend.service_env())
    kafka_backend = None
    if "kafka" in stores:
        kafka = KafkaServer(directory / "kafka")
        children["kafka"] = kafka
        kafka.start()
        kafka_backend = Backend("kafka", directory, kafka=kafka)
        kafka.create_topic(kafka_backend.name, partitions=3)
        env.update(
            {
                "AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "AEP_DATABASE_KAFKA_TOPIC": kafka_backend.name,
            }
        )
    mongo_backend = None
    if "mongodb" in stores:
        mongo = MongoServer(directory / "mongo")
        children["mongodb"] = mongo
        mongo.start()
        mongo_backend = Backend("mongodb", directory, mongo=mongo)
        env.update(
            {
                "AEP_DATABASE_MONGODB_URI": mongo.uri,
                "AEP_DATABASE_MONGODB_DATABASE": mongo_backend.name,
            }
        )
    paused = children[args.paused]
    server = ServerProcess(
        directory / "service",
        {
            **env,
            "AEP_DATABASE_TYPE": args.stores,
            "AEP_SPILL_DIR": str(directory / "service" / "spill"),
            "AEP_DATABASE_OPERATION_TIMEOUT": "500ms",
            "AEP_RETRY_MAX_ATTEMPTS": "1000000",
            "AEP_RETRY_MAX_BACKOFF": "200ms",
            "AEP_HEALTH_STORE_DOWN_AFTER": "2s",
            "AEP_SHUTDOWN_GRACE_PERIOD": "60s",
        },
    )
    server.start()
    phase = args.phase_seconds
    print(f"stores {args.stores}, {args.paused} paused in phase 2; {phase:g}s phases")
    try:
        load_sender = LoadSender(
            server.address, workers=args.workers, batch=args.batch, pause_s=args.pause
        )
        with load_sender as load:
            time.sleep(3)  # warm-up
            start = store_counts(server)
            time.sleep(phase)
            unpaused_end = store_counts(server)
            unpaused = rates(start, unpaused_end, phase)
            paused.pause()
            peak_spill = 0
            deadline = time.monotonic() + phase
            while time.monotonic() < deadline:
                time.sleep(1)
                lane = {s.store_type: s for s in health(server).stores}[args.paused]
                peak_spill = max(peak_spill, lane.spill_bytes)
            paused_end = store_counts(server)
            during = rates(unpaused_end, paused_end, phase)
            lag = {s.store_type: s for s in health(server).stores}[args.paused]
            paused.resume()
            resumed_at = time.monotonic()
            refusals = dict(load.refusals)
        wait_for(lambda: health(server).pending_events == 0, args.max_catch_up_seconds, "catch-up")
        catch_up = time.monotonic() - resumed_at
        acknowledged = set(load.acknowledged)
        print(f"{'store':>8} {'unpaused ev/s':>14} {'paused ev/s':>12} {'ratio':>6}")
        for name in stores:
            ratio = during[name] / unpaused[name] if unpaused.get(name) else float("nan")
            print(f"{name:>8} {unpaused[name]:>14,.0f} {during[name]:>12,.0f} {ratio:>6.2f}")
        print(
            f"{args.paused}: lag at the end of the pause {lag.pending_events:,} events "
            f"({lag.spill_events:,} spilled), spill peak {peak_spill / 1e6:.1f} MB, caught up "
            f"{catch_up:.1f}s after resuming; refusals during the run: {refusals or 'none'}"
        )
        assert server.stop() == 0, server.log()
        stored: dict[str, list[str]] = {}
        if redis_backend is not None:
            stored["redis"] = redis_backend.read_ids()
        if mongo_backend is not None:
            stored["mongodb"] = mongo_backend.read_ids()
        if "file" in stores:
            stored["file"] = [str(e["event_id"]) for e in stored_events(server.events_dir)]
        for name, ids in stored.items():
            repeated = sum(1 for n in Counter(ids).values() if n > 1)
            missing = len(acknowledged - set(ids))
            print(
                f"{name}: {len(acknowledged):,} acknowledged, missing {missing}, twice {repeated}"
            )
        if kafka_backend is not None:
            keys = [key.decode() for key, _value, _partition in kafka_backend.read_kafka()]
            extra = len(keys) - len(set(keys))
            missing = len(acknowledged - set(keys))
            print(
                f"kafka: {len(acknowledged):,} acknowledged, missing {missing}, "
                f"{len(keys):,} records ({extra} repeated: at least once)"
            )
    finally:
        server.stop()
        for child in children.values():
            child.resume()
            child.stop()
        # A 30 s run leaves gigabytes of events and spill behind.
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
