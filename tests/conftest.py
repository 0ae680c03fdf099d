from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.backends import SHARED_STORE_KINDS, STORE_KINDS, Backend
from tests.helpers.servers import KafkaServer, MongoServer, RedisClusterServer, RedisServer
from tests.helpers.support import ServerProcess, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server on the file store, default settings, free loopback ports."""
    with running_server(tmp_path / "server") as process:
        yield process


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A redis-server and one replica of it (started once it is in sync), on free
    loopback ports: what database.redis.min_replicas_acked is tested against."""
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(tmp_path / "replica", replica_of=primary.port)
    try:
        replica.start()
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate by stream name."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """One 3-master Redis Cluster (6 redis-server) for the session; tests isolate by
    stream name. Tests that kill nodes start their own."""
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One nx-27017 (in memory) for the session; tests isolate by database name."""
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One Tansu broker (in memory) for the session; tests isolate by topic name."""
    server = KafkaServer(tmp_path_factory.mktemp("kafka"))
    server.start()
    yield server
    server.stop()


def make_backend(request: pytest.FixtureRequest, kind: str, directory: Path) -> Backend:
    # Servers start only when a test of their kind runs.
    if kind == "redis":
        return Backend(kind, directory, redis=request.getfixturevalue("redis_server"))
    if kind == "redis-cluster":
        return Backend(kind, directory, redis_cluster=request.getfixturevalue("redis_cluster"))
    if kind == "mongodb":
        return Backend(kind, directory, mongo=request.getfixturevalue("mongo_server"))
    if kind == "kafka":
        return Backend(kind, directory, kafka=request.getfixturevalue("kafka_server"))
    return Backend(kind, directory)


@pytest.fixture(params=STORE_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each store kind in turn, against a real server."""
    return make_backend(request, request.param, tmp_path)


@pytest.fixture(params=SHARED_STORE_KINDS)
def network_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The stores that several replicas share (Redis, a Redis Cluster, MongoDB, Kafka)."""
    return make_backend(request, request.param, tmp_path)
