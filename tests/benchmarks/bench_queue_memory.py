"""`make bench-queue-memory`: RSS per queued event, with 100,000 events waiting in the queue.

Starts a redis-server and ad-event-processor on the Redis store, warms the
server up with a few thousand events, then pauses Redis's writes
(`CLIENT PAUSE ... WRITE`), so the store's writers wait and every event sent
after that stays queued. Sends `--events` events in batches of 100 (the load
driver's events: six fields, ids assigned by the server), waits until the
pipeline reports them pending, and prints the server's RSS before and with
them queued, and the difference per event. Then unpauses Redis and checks every
event was written.

`--service-path DIR` runs the server from another checkout's `service/`
folder (PYTHONPATH), to compare with an earlier version of the pipeline:
    git worktree add /tmp/before <commit>
    python tests/benchmarks/bench_queue_memory.py --service-path /tmp/before/service
Everything talks to 127.0.0.1 only; the load is bounded in count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: tests.helpers
from aep.proto.adevents.v1 import ad_events_pb2 as pb  # noqa: E402
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc  # noqa: E402
from tests.benchmarks.load_driver import load_events  # noqa: E402
from tests.helpers.servers import RedisServer  # noqa: E402
from tests.helpers.support import ServerProcess, scrape  # noqa: E402

_BATCH = 100
_STREAM = "queue_memory"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _requests(count: int, prefix: str) -> list[pb.SendAdEventBatchRequest]:
    """The load driver's events, in batches of 100, each marked with `prefix`."""
    events = load_events(count)
    for event in events:
        event.attributes["origin"] = prefix
    return [
        pb.SendAdEventBatchRequest(events=events[start : start + _BATCH])
        for start in range(0, count, _BATCH)
    ]


def _send(address: str, requests: list[pb.SendAdEventBatchRequest]) -> int:
    accepted = 0
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AdEventServiceStub(channel)
        futures = [stub.SendAdEventBatch.future(request, timeout=60) for request in requests]
        for future in futures:
            accepted += future.result().accepted_count
    return accepted


def _wait(until: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if until():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def measure(events: int, service_path: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="aep-queue-memory-") as scratch:
        root = Path(scratch)
        store = RedisServer(root / "redis")
        store.start()
        env = {
            "AEP_DATABASE_TYPE": "redis",
            "AEP_DATABASE_REDIS_URL": store.url,
            "AEP_DATABASE_REDIS_STREAM": _STREAM,
            "AEP_DATABASE_OPERATION_TIMEOUT": "300s",
            "AEP_QUEUE_MAX_EVENTS": str(events + 10_000),
            "AEP_QUEUE_MAX_BYTES": "1GiB",
            "AEP_LOGGING_LEVEL": "warning",
        }
        if service_path:
            env["PYTHONPATH"] = service_path
        server = ServerProcess(root / "server", env).start()
        client = redis.Redis.from_url(store.url)
        try:
            assert server.process is not None
            pid = server.process.pid
            warm_up = 5_000
            _send(server.address, _requests(warm_up, "warm-up"))
            _wait(lambda: client.xlen(_STREAM) >= warm_up, 60, "warm-up not written")
            idle = _rss_mb(pid)
            client.client_pause(600_000, all=False)  # writes wait, PING answers
            accepted = _send(server.address, _requests(events, "queued"))
            _wait(
                lambda: scrape(server.metrics_port).total("pipeline_pending_events") >= accepted,
                60,
                "the events did not show as pending",
            )
            time.sleep(1.0)
            held = _rss_mb(pid)
            pending = scrape(server.metrics_port).total("pipeline_pending_events")
            client.client_unpause()
            _wait(lambda: client.xlen(_STREAM) >= warm_up + accepted, 300, "queued not written")
            written = client.xlen(_STREAM) - warm_up
        finally:
            try:
                client.client_unpause()
            finally:
                server.stop()
                store.stop()
    return {
        "events": float(accepted),
        "pending_seen": pending,
        "rss_idle_mb": idle,
        "rss_queued_mb": held,
        "bytes_per_queued_event": (held - idle) * 1024 * 1024 / accepted,
        "written_after_unpause": float(written),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to queue")
    parser.add_argument("--service-path", help="PYTHONPATH for the server (another checkout)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure(args.events, args.service_path)
    figures["codec"] = os.environ.get("AEP_SERVER_CODEC", "auto")  # type: ignore[assignment]
    print(
        f"{figures['events']:.0f} events queued ({figures['pending_seen']:.0f} pending seen): "
        f"RSS {figures['rss_idle_mb']:.1f} MB idle -> {figures['rss_queued_mb']:.1f} MB queued = "
        f"{figures['bytes_per_queued_event']:.0f} bytes per queued event; "
        f"{figures['written_after_unpause']:.0f} written after Redis answered again"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
