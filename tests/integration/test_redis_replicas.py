"""database.redis.min_replicas_acked through the real service: a committed ack means the
replica has the events, and a replica that confirms nothing fails the write with a
status that says so. Against a real redis-server and a real replica of it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import grpc
import pytest
import redis

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.backends import Backend
from tests.helpers.servers import RedisServer
from tests.helpers.support import ServerProcess, valid_event

pytestmark = pytest.mark.integration


def _stream_ids(server: RedisServer, stream: str) -> list[str]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
    finally:
        client.close()
    return [fields["event_id"] for _, fields in entries]


def _send(api: pb_grpc.AdEventServiceStub, ids: list[str]) -> list[str]:
    response = api.SendAdEventBatch(
        pb.SendAdEventBatchRequest(
            events=[valid_event(event_id=event_id) for event_id in ids],
            ack_mode=pb.ACK_MODE_COMMITTED,
        ),
        timeout=30,
    )
    return [r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED]


def test_committed_acks_wait_for_the_replica_and_fail_when_it_confirms_nothing(
    tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = replicated
    backend = Backend("redis", tmp_path, redis=primary)
    server = ServerProcess(
        tmp_path / "service",
        {
            **backend.service_env(),
            "AEP_DATABASE_REDIS_MIN_REPLICAS_ACKED": "1",
            "AEP_DATABASE_REDIS_REPLICA_ACK_TIMEOUT": "300ms",
            "AEP_RETRY_MAX_ATTEMPTS": "2",
            "AEP_BATCH_FLUSH_INTERVAL": "20ms",
        },
    ).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            first = [f"a{i}" for i in range(10)]
            assert _send(api, first) == first
            # Acknowledged as committed: read on the replica at once, it is there.
            assert _stream_ids(replica, backend.name) == first
            replica.pause()
            try:
                with pytest.raises(grpc.RpcError) as raised:
                    _send(api, [f"b{i}" for i in range(10)])
            finally:
                replica.resume()
            error = cast(grpc.Call, raised.value)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "0 of database.redis.min_replicas_acked=1 replicas confirmed" in (
                error.details() or ""
            )
            third = [f"c{i}" for i in range(10)]
            assert _send(api, third) == third
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    # The refused batch is on the primary (and dead-lettered, as the status said);
    # what was acknowledged reached the replica.
    on_replica = _stream_ids(replica, backend.name)
    assert set(first + third) <= set(on_replica)
