"""The real service process on a real Redis / MongoDB wire-protocol server that dies,
comes back, or is not there yet. Every acknowledged event must end up stored once
(or dead-lettered and replayed), and health must follow the store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.backends import NETWORK_STORE_KINDS, Backend
from tests.helpers.servers import ChildServer, MongoServer, RedisServer
from tests.helpers.support import ServerProcess, valid_event

pytestmark = pytest.mark.integration

SERVICE = "adevents.v1.AdEventService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(params=NETWORK_STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, ChildServer]]:
    """A persistent store server of each kind, not started: tests start, kill, restart it.

    Redis runs with appendonly (everysec) and no snapshots; nx-27017 with its
    SQLite file, so both keep what they acknowledged across a SIGKILL.
    """
    server: ChildServer
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis", append_only=True)
        backend = Backend("redis", tmp_path, redis=server)
    else:
        server = MongoServer(tmp_path / "mongo", file_backed=True)
        backend = Backend("mongodb", tmp_path, mongo=server)
    yield backend, server
    server.stop()


def service(backend: Backend, tmp_path: Path, **env: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "service",
        {
            **backend.service_env(),
            "AEP_DATABASE_CONNECT_TIMEOUT": "500ms",
            "AEP_BATCH_FLUSH_INTERVAL": "20ms",
            **env,
        },
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)


def grpc_health(address: str, name: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service=name)
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)
        except grpc.RpcError:
            return None


def http_health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def health_everywhere(server: ServerProcess) -> tuple[int | None, int | None, int]:
    return (
        grpc_health(server.address, ""),
        grpc_health(server.address, SERVICE),
        http_health(server.metrics_port),
    )


def send_batch(
    api: pb_grpc.AdEventServiceStub,
    ids: list[str],
    ack: pb.AckMode.ValueType = pb.ACK_MODE_UNSPECIFIED,
) -> list[str]:
    events = [valid_event(event_id=event_id) for event_id in ids]
    response = api.SendAdEventBatch(
        pb.SendAdEventBatchRequest(events=events, ack_mode=ack), timeout=20
    )
    return [r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED]


def pending_events(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        return int(api.HealthCheck(pb.HealthCheckRequest(), timeout=5).pending_events)


def dead_lettered_ids(directory: Path) -> list[str]:
    return [
        orjson.loads(line)["event"]["event_id"]
        for path in directory.rglob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


class LoadSender:
    """Client threads sending batches of unique ids; a failed batch is retried with
    the same ids, as a well-behaved client does. Records what was acknowledged."""

    def __init__(
        self, address: str, workers: int = 4, batch: int = 50, pause_s: float = 0.02
    ) -> None:
        self.address = address
        self.batch = batch
        # Bounds the load (here ~10k events/s) so the drain at the end stays far
        # inside the shutdown grace period on a slow, shared machine.
        self.pause_s = pause_s
        self.acknowledged: list[str] = []
        self.sent: set[str] = set()
        self.refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(workers)]

    def __enter__(self) -> LoadSender:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, worker: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            sequence = 0
            while not self._stop.is_set():
                sequence += 1
                ids = [f"w{worker}-{sequence}-{i}" for i in range(self.batch)]
                with self._lock:
                    self.sent.update(ids)
                while not self._stop.is_set():
                    try:
                        accepted = send_batch(api, ids)
                    except grpc.RpcError as error:
                        with self._lock:
                            self.refusals[error.code().name] += 1
                        time.sleep(0.05)
                        continue
                    with self._lock:
                        self.acknowledged.extend(accepted)
                    break
                time.sleep(self.pause_s)


def assert_acknowledged_stored_once(backend: Backend, sender: LoadSender) -> list[str]:
    stored = backend.read_ids()
    repeated = [i for i, n in Counter(stored).items() if n > 1]
    assert not repeated, f"stored twice: {repeated[:5]}"
    missing = set(sender.acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events not stored, e.g. {sorted(missing)[:5]}"
    assert set(stored) <= sender.sent
    return stored


def test_store_killed_and_restarted_mid_load_loses_nothing(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, store_server = store
    store_server.start()
    server = service(
        backend,
        tmp_path,
        AEP_RETRY_MAX_ATTEMPTS="1000",  # outlast the outage: this test is about the retry
        AEP_RETRY_MAX_BACKOFF="200ms",
        AEP_DATABASE_OPERATION_TIMEOUT="2s",
    ).start()
    try:
        with LoadSender(server.address) as sender:
            wait_for(lambda: sender.count() >= 2000, 30, "2000 events acknowledged")
            store_server.kill()
            before_outage = sender.count()
            time.sleep(1.5)
            during_outage = sender.count() - before_outage
            store_server.start()
            after_restart = sender.count()
            wait_for(lambda: sender.count() >= after_restart + 2000, 60, "load after restart")
        exit_code = server.stop()
    finally:
        server.stop()
    assert exit_code == 0, server.log()
    stored = assert_acknowledged_stored_once(backend, sender)
    print(
        f"{backend.kind}: acknowledged={len(sender.acknowledged)} stored={len(stored)} "
        f"duplicates={len(stored) - len(set(stored))} "
        f"lost={len(set(sender.acknowledged) - set(stored))} "
        f"during_outage={during_outage} refusals={dict(sender.refusals)}"
    )
    assert during_outage > 0, "the service kept accepting while the store was down"
    assert dead_lettered_ids(server.dead_letter_dir) == []


def test_health_follows_the_store_down_and_up(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, store_server = store
    store_server.start()
    server = service(
        backend,
        tmp_path,
        AEP_HEALTH_STORE_DOWN_AFTER="1s",
        AEP_HEALTH_STORE_CHECK_INTERVAL="100ms",
    ).start()
    try:
        assert health_everywhere(server) == (SERVING, SERVING, 200)
        store_server.kill()
        killed_at = time.monotonic()
        wait_for(lambda: grpc_health(server.address, "") == NOT_SERVING, 15, "NOT_SERVING")
        down_after = time.monotonic() - killed_at
        assert health_everywhere(server) == (NOT_SERVING, NOT_SERVING, 503)
        with grpc.insecure_channel(server.address) as channel:
            state = pb_grpc.AdEventServiceStub(channel).HealthCheck(
                pb.HealthCheckRequest(), timeout=5
            )
        assert not state.store_healthy
        assert state.store_detail != "ok"
        store_server.start()
        wait_for(lambda: health_everywhere(server) == (SERVING, SERVING, 200), 20, "SERVING")
        with grpc.insecure_channel(server.address) as channel:
            accepted = send_batch(
                pb_grpc.AdEventServiceStub(channel), ["after"], pb.ACK_MODE_COMMITTED
            )
        assert accepted == ["after"]
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    assert down_after >= 0.9, f"NOT_SERVING after {down_after:.2f}s, before store_down_after"
    assert "after" in backend.read_ids()


def test_store_down_fills_the_queue_then_resource_exhausted_then_all_stored(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, store_server = store
    store_server.start()
    server = service(
        backend,
        tmp_path,
        AEP_QUEUE_MAX_EVENTS="500",
        AEP_RETRY_MAX_ATTEMPTS="1000",
        AEP_RETRY_MAX_BACKOFF="100ms",
        AEP_DATABASE_OPERATION_TIMEOUT="1s",
    ).start()
    accepted: list[str] = []
    try:
        store_server.kill()
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            for batch in range(10):
                accepted += send_batch(api, [f"q{batch}-{i}" for i in range(50)])
            with pytest.raises(grpc.RpcError) as refused:
                send_batch(api, ["one-too-many"])
            assert pending_events(server) == 500
            store_server.start()
            wait_for(lambda: pending_events(server) == 0, 30, "queue drained into the store")
            accepted += send_batch(api, ["after-recovery"])
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue.max_events=500" in str(refused.value.details())
    stored = backend.read_ids()
    assert len(accepted) == 501
    assert sorted(stored) == sorted(accepted)


def test_fail_fast_start_up_exits_3_when_the_store_is_unreachable(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, _never_started = store
    server = service(backend, tmp_path)
    started = time.monotonic()
    server.start(wait=False)
    assert server.wait_exit(30) == 3
    assert time.monotonic() - started < 20
    log = server.log()
    assert "cannot open the store" in log
    assert "database.startup=wait" in log


def test_wait_start_up_is_not_serving_until_the_store_answers(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, store_server = store
    server = service(
        backend, tmp_path, AEP_DATABASE_STARTUP="wait", AEP_HEALTH_STORE_CHECK_INTERVAL="100ms"
    )
    server.start(wait=False)
    try:
        wait_for(lambda: grpc_health(server.address, "") is not None, 20, "listening")
        assert health_everywhere(server) == (NOT_SERVING, NOT_SERVING, 503)
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            early = send_batch(api, [f"early-{i}" for i in range(20)])
            state = api.HealthCheck(pb.HealthCheckRequest(), timeout=5)
        assert len(early) == 20  # queued until the store is there
        assert not state.store_healthy
        time.sleep(0.5)
        assert server.process is not None and server.process.poll() is None
        store_server.start()
        server.wait_serving(timeout_s=20)
        assert health_everywhere(server) == (SERVING, SERVING, 200)
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    assert sorted(backend.read_ids()) == sorted(early)


def test_dead_lettered_events_are_replayed_once(
    store: tuple[Backend, ChildServer], tmp_path: Path
) -> None:
    backend, store_server = store
    store_server.start()
    server = service(
        backend,
        tmp_path,
        AEP_RETRY_MAX_ATTEMPTS="2",
        AEP_RETRY_INITIAL_BACKOFF="10ms",
        AEP_DATABASE_OPERATION_TIMEOUT="1s",
    ).start()
    stored_first = [f"a{i}" for i in range(50)]
    failed = [f"b{i}" for i in range(100)] + stored_first[:10]  # 10 already stored
    try:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            assert send_batch(api, stored_first, pb.ACK_MODE_COMMITTED) == stored_first
            store_server.kill()
            assert send_batch(api, failed) == failed
            wait_for(
                lambda: len(dead_lettered_ids(server.dead_letter_dir)) == len(failed),
                60,
                "the batch dead-lettered past retry.max_attempts",
            )
        store_server.start()
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    assert sorted(backend.read_ids()) == sorted(stored_first)
    first = replay_dlq(server)
    assert first.returncode == 0, first.stderr
    assert "110 events, 100 written, 10 duplicates" in first.stdout
    assert sorted(backend.read_ids()) == sorted(stored_first + failed[:100])
    second = replay_dlq(server)
    assert second.returncode == 0, second.stderr
    assert "0 of 0 files replayed" in second.stdout
    stored = backend.read_ids()
    assert len(stored) == 150
    replayed = list((server.dead_letter_dir / "replayed").glob("*.jsonl"))
    assert len(replayed) == 1
    acknowledged = set(stored_first) | set(failed)
    print(
        f"{backend.kind} dead-letter replay: acknowledged={len(acknowledged)} "
        f"stored={len(stored)} duplicates={len(stored) - len(set(stored))} "
        f"lost={len(acknowledged - set(stored))} dead_lettered={len(failed)}"
    )


def replay_dlq(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **server.environment()}
    return subprocess.run(
        [sys.executable, "-m", "aep", "replay-dlq"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
