"""The real service writing to two stores at once (database.type=file,redis) on a real
Redis that is paused (SIGSTOP) under load: the file lane goes on, Redis's events
spill to disk, nothing is refused, health stays SERVING and reports the spill, and
after Redis resumes every acknowledged event is in both stores exactly once."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.backends import Backend
from tests.helpers.servers import RedisServer
from tests.helpers.support import ServerProcess, stored_events
from tests.integration.test_store_outage import LoadSender, grpc_health, wait_for

pytestmark = pytest.mark.integration

SERVING = 1  # grpc.health.v1 SERVING


def health(address: str) -> pb.HealthCheckResponse:
    with grpc.insecure_channel(address) as channel:
        response: pb.HealthCheckResponse = pb_grpc.AdEventServiceStub(channel).HealthCheck(
            pb.HealthCheckRequest(), timeout=5
        )
        return response


def test_a_paused_redis_spills_while_the_file_store_goes_on_then_both_hold_everything_once(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    backend = Backend("redis", tmp_path, redis=redis)
    server = ServerProcess(
        tmp_path / "service",
        {
            **backend.service_env(),
            "AEP_DATABASE_TYPE": "file,redis",
            "AEP_SPILL_DIR": str(tmp_path / "service" / "spill"),
            "AEP_QUEUE_MAX_EVENTS": "500",
            "AEP_BATCH_FLUSH_INTERVAL": "20ms",
            "AEP_DATABASE_OPERATION_TIMEOUT": "500ms",
            "AEP_DATABASE_CONNECT_TIMEOUT": "500ms",
            "AEP_RETRY_MAX_ATTEMPTS": "100000",  # outlast the pause
            "AEP_RETRY_MAX_BACKOFF": "200ms",
            "AEP_HEALTH_STORE_DOWN_AFTER": "1s",
        },
    )
    server.start()
    try:
        with LoadSender(server.address, workers=2, batch=50, pause_s=0.02) as sender:
            wait_for(lambda: sender.count() >= 500, 20, "load flows")
            redis.pause()
            paused_at = sender.count()
            time.sleep(4.0)  # > health.store_down_after: the spill keeps it SERVING
            during = health(server.address)
            serving = grpc_health(server.address, "")
            acknowledged_while_paused = sender.count() - paused_at
            redis.resume()
        by_store = {status.store_type: status for status in during.stores}
        print(during)
        assert list(by_store) == ["file", "redis"]
        assert during.store_type == "file,redis"
        assert by_store["file"].healthy
        assert by_store["file"].state == pb.StoreStatus.STATE_WRITING
        assert by_store["redis"].state in (
            pb.StoreStatus.STATE_FAILING,
            pb.StoreStatus.STATE_SPILLING,
        )
        assert by_store["redis"].spill_events > 0 and by_store["redis"].spill_bytes > 0
        assert by_store["redis"].pending_events > 500, "Redis's lag is past its queue"
        assert serving == SERVING, "a store spilling within bounds keeps the server SERVING"
        assert acknowledged_while_paused > 1000, "the file lane kept taking traffic"
        assert not sender.refusals, f"nothing refused while the spill had room: {sender.refusals}"

        wait_for(
            lambda: health(server.address).pending_events == 0, 60, "Redis caught up from its spill"
        )
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5
        ).read()
        assert b'events_processed_total{store="redis"}' in metrics
        assert b'events_processed_total{store="file"}' in metrics
        assert b'spill_bytes{store="redis"}' in metrics
        assert server.stop() == 0, server.log()
        in_redis = backend.read_ids()
    finally:
        server.stop()
        redis.stop()
    acknowledged = set(sender.acknowledged)
    print(f"acknowledged {len(acknowledged)}, {acknowledged_while_paused} while Redis was paused")
    for name, stored in (
        ("redis", in_redis),
        ("file", [str(e["event_id"]) for e in stored_events(server.events_dir)]),
    ):
        repeated = [i for i, n in Counter(stored).items() if n > 1]
        assert not repeated, f"{name}: stored twice: {repeated[:5]}"
        missing = acknowledged - set(stored)
        assert not missing, f"{name}: {len(missing)} acknowledged events missing"
    assert not list((tmp_path / "service" / "spill" / "redis").glob("wal-*.log"))
