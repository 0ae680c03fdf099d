"""`make soak`: a bounded soak run watching RSS and open file descriptors.

Runs our server (file store, write-ahead log) for --seconds under mixed load
with faults: batches and streams in every ack mode, invalid events, malformed
bytes, streams cancelled mid-flight, and bursts past a small queue bound. Every
--sample seconds it prints RSS and open fds; at the end it compares the last
third with the first third (after warm-up), stops the server with SIGTERM and
checks that every acknowledged event was stored exactly once. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from statistics import fmean

import grpc
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: tests.helpers
from aep.proto.adevents.v1 import ad_events_pb2 as pb  # noqa: E402
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc  # noqa: E402
from tests.helpers.support import free_port, now_timestamp, valid_event  # noqa: E402

ACK_MODES = (pb.ACK_MODE_ACCEPTED, pb.ACK_MODE_DURABLE, pb.ACK_MODE_COMMITTED)


def stored_ids(directory: Path) -> list[str]:
    """The event_ids of every stored line, without keeping whole events in memory."""
    ids: list[str] = []
    for path in sorted(directory.glob("events-*.jsonl")):
        with path.open("rb") as lines:
            ids.extend(str(orjson.loads(line)["event_id"]) for line in lines)
    return ids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    def __init__(self, address: str, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.acknowledged: set[str] = set()
        self.codes: Counter[str] = Counter()
        self.rng = random.Random(7)
        self.sequence = 0

    def _events(self, count: int) -> list[pb.AdEvent]:
        events = []
        for _ in range(count):
            self.sequence += 1
            if self.rng.random() < 0.05:
                events.append(valid_event(event_id=f"bad-{self.sequence}", user_id=""))
            else:
                events.append(valid_event(event_id=f"s-{self.sequence}", timestamp=now_timestamp()))
        return events

    def _note(self, results: Iterable[pb.EventResult]) -> None:
        for result in results:
            if result.status == pb.EVENT_STATUS_ACCEPTED:
                self.acknowledged.add(result.event_id)

    async def batches(self, channel: grpc.aio.Channel) -> None:
        api = pb_grpc.AdEventServiceStub(channel)
        while time.monotonic() < self.deadline:
            request = pb.SendAdEventBatchRequest(
                events=self._events(self.rng.choice((1, 10, 100, 500))),
                ack_mode=self.rng.choice(ACK_MODES),
            )
            try:
                response = await api.SendAdEventBatch(request, timeout=10)
                self._note(response.results)
                self.codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                self.codes[error.code().name] += 1
            # A soak is about staying flat, not about the maximum: a steady mixed
            # load (~ several thousand events/s) keeps the stored volume checkable.
            await asyncio.sleep(0.05)

    async def streams(self, channel: grpc.aio.Channel) -> None:
        api = pb_grpc.AdEventServiceStub(channel)
        while time.monotonic() < self.deadline:
            chunks = [
                pb.StreamAdEventsRequest(
                    sequence=n, events=self._events(100), ack_mode=self.rng.choice(ACK_MODES)
                )
                for n in range(1, 21)
            ]
            call = api.StreamAdEvents(iter(chunks), timeout=30)
            try:
                async for ack in call:
                    self._note(ack.results)
                    if self.rng.random() < 0.02:
                        call.cancel()  # a client going away mid-stream
                        break
                self.codes["stream"] += 1
            except grpc.aio.AioRpcError as error:
                self.codes[f"stream {error.code().name}"] += 1
            await asyncio.sleep(0.5)

    async def garbage(self, channel: grpc.aio.Channel) -> None:
        raw = channel.unary_unary("/adevents.v1.AdEventService/SendAdEventBatch", None, None)
        while time.monotonic() < self.deadline:
            payload = self.rng.randbytes(self.rng.randrange(1, 2000))
            try:
                await raw(payload, timeout=5)
            except grpc.aio.AioRpcError as error:
                self.codes[f"garbage {error.code().name}"] += 1
            await asyncio.sleep(0.01)


async def drive(address: str, seconds: float) -> Load:
    load = Load(address, time.monotonic() + seconds)
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.gather(
            *(load.batches(channel) for _ in range(6)),
            *(load.streams(channel) for _ in range(2)),
            load.garbage(channel),
        )
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--sample", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aep-soak-") as scratch:
        data = Path(scratch)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AEP_")}
        env.update(
            AEP_SERVER_HOST="127.0.0.1",
            AEP_SERVER_PORT=str(port),
            AEP_METRICS_HOST="127.0.0.1",
            AEP_METRICS_PORT=str(free_port()),
            AEP_DATABASE_FILE_DIR=str(data / "events"),
            AEP_DEAD_LETTER_DIR=str(data / "dead-letter"),
            AEP_WAL_DIR=str(data / "wal"),
            AEP_QUEUE_MAX_EVENTS="20000",
            AEP_LOGGING_LEVEL="warning",
            PYTHONPATH=str(HERE.parent.parent / "service"),
        )
        server = subprocess.Popen([sys.executable, "-m", "aep"], env=env)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        samples: list[tuple[float, float, int]] = []

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                await asyncio.sleep(args.sample)
                sample = (time.monotonic() - started, rss_mb(server.pid), open_fds(server.pid))
                samples.append(sample)
                print(f"t={sample[0]:6.0f}s rss={sample[1]:7.1f} MB fds={sample[2]}", flush=True)

        async def everything() -> Load:
            load, _ = await asyncio.gather(drive(f"127.0.0.1:{port}", args.seconds), sampler())
            return load

        load = asyncio.run(everything())
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=120)
        stored = stored_ids(data / "events")
        dead = [
            str(orjson.loads(line)["event"]["event_id"])
            for path in (data / "dead-letter").glob("*.jsonl")
            for line in path.read_bytes().splitlines()
        ]
    third = max(1, len(samples) // 3)
    early, late = samples[third : 2 * third] or samples[:1], samples[-third:]
    print(f"codes: {dict(load.codes)}")
    print(
        f"RSS MB: middle third {fmean(s[1] for s in early):.1f}, "
        f"last third {fmean(s[1] for s in late):.1f}, max {max(s[1] for s in samples):.1f}; "
        f"open fds: {min(s[2] for s in samples)}..{max(s[2] for s in samples)}"
    )
    counts = Counter(stored)
    lost = load.acknowledged - set(stored) - set(dead)
    duplicates = sum(c - 1 for c in counts.values())
    print(
        f"exit code {exit_code}; acknowledged {len(load.acknowledged)}, stored {len(stored)}, "
        f"duplicates {duplicates}, dead-lettered {len(dead)}, lost {len(lost)}"
    )
    if exit_code != 0 or lost or duplicates:
        sys.exit(1)


if __name__ == "__main__":
    main()
