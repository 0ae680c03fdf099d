"""One store under test: its settings, new store instances, and its stored events
read back with the backend's own client (not through our store code)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from aep.events.schema import FieldKind, stored_names
from aep.settings import (
    DatabaseSettings,
    FileStoreSettings,
    KafkaStoreSettings,
    MongoStoreSettings,
    RedisStoreSettings,
    StoreType,
)
from aep.storage import EventStore, create_store
from tests.helpers.servers import KafkaServer, MongoServer, RedisClusterServer, RedisServer
from tests.helpers.support import stored_events

STRING_MAP_FIELDS = stored_names(FieldKind.STRING_MAP)
STORE_KINDS = ["file", "redis", "redis-cluster", "mongodb", "kafka"]
# Servers the outage tests kill and restart with their data (Tansu keeps its
# records in memory only, so Kafka's outage tests pause the broker instead).
NETWORK_STORE_KINDS = ["redis", "mongodb"]
# Servers several replicas share: the network stores, a Redis Cluster and Kafka.
SHARED_STORE_KINDS = [*NETWORK_STORE_KINDS, "redis-cluster", "kafka"]
# Stores that keep an event_id once (duplicates counted, not stored). Kafka is
# at least once: every write appends, `duplicates` is always 0.
DEDUPING_STORE_KINDS = ["file", "redis", "redis-cluster", "mongodb"]
# How long reading a Kafka topic back to its end may take.
KAFKA_READ_TIMEOUT_S = 30.0
# Stream entries read per XRANGE.
REDIS_READ_PAGE = 10_000


@dataclass
class Backend:
    kind: str
    directory: Path
    redis: RedisServer | None = None
    redis_cluster: RedisClusterServer | None = None
    mongo: MongoServer | None = None
    kafka: KafkaServer | None = None
    # Unique per test, so tests sharing one server never see each other's events.
    name: str = field(default_factory=lambda: "t" + secrets.token_hex(6))

    def settings(self, **section: Any) -> DatabaseSettings:
        if self.kind == "file":
            return DatabaseSettings(
                type=StoreType.FILE,
                file=FileStoreSettings(dir=self.directory / "events", **section),
            )
        if self.kind == "redis":
            assert self.redis is not None
            return DatabaseSettings(
                type=StoreType.REDIS,
                redis=RedisStoreSettings(url=self.redis.url, stream=self.name, **section),
                connect_timeout=2.0,
                operation_timeout=10.0,
            )
        if self.kind == "redis-cluster":
            assert self.redis_cluster is not None
            return DatabaseSettings(
                type=StoreType.REDIS,
                redis=RedisStoreSettings(
                    url=self.redis_cluster.url, stream=self.name, cluster=True, **section
                ),
                connect_timeout=2.0,
                operation_timeout=10.0,
            )
        if self.kind == "kafka":
            assert self.kafka is not None
            return DatabaseSettings(
                type=StoreType.KAFKA,
                kafka=KafkaStoreSettings(
                    bootstrap_servers=self.kafka.bootstrap_servers, topic=self.name, **section
                ),
                connect_timeout=2.0,
                operation_timeout=10.0,
            )
        assert self.mongo is not None
        return DatabaseSettings(
            type=StoreType.MONGODB,
            mongodb=MongoStoreSettings(uri=self.mongo.uri, database=self.name, **section),
            connect_timeout=2.0,
            operation_timeout=30.0,
        )

    def service_env(self) -> dict[str, str]:
        """AEP_ variables that point a service process at this store."""
        if self.kind == "file":
            return {"AEP_DATABASE_TYPE": "file"}
        if self.kind == "redis":
            assert self.redis is not None
            return {
                "AEP_DATABASE_TYPE": "redis",
                "AEP_DATABASE_REDIS_URL": self.redis.url,
                "AEP_DATABASE_REDIS_STREAM": self.name,
            }
        if self.kind == "redis-cluster":
            assert self.redis_cluster is not None
            return {
                "AEP_DATABASE_TYPE": "redis",
                "AEP_DATABASE_REDIS_CLUSTER": "true",
                "AEP_DATABASE_REDIS_URL": self.redis_cluster.url,
                "AEP_DATABASE_REDIS_STREAM": self.name,
            }
        if self.kind == "kafka":
            assert self.kafka is not None
            return {
                "AEP_DATABASE_TYPE": "kafka",
                "AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                "AEP_DATABASE_KAFKA_TOPIC": self.name,
            }
        assert self.mongo is not None
        return {
            "AEP_DATABASE_TYPE": "mongodb",
            "AEP_DATABASE_MONGODB_URI": self.mongo.uri,
            "AEP_DATABASE_MONGODB_DATABASE": self.name,
        }

    def make_store(self, writers: int = 2, **section: Any) -> EventStore:
        return create_store(self.settings(**section), worker_count=writers)

    async def open_store(self, writers: int = 2, **section: Any) -> EventStore:
        store = self.make_store(writers, **section)
        await store.open()
        return store

    def read_records(self) -> list[dict[str, Any]]:
        """Every stored event, in the backend's own representation."""
        if self.kind == "file":
            return stored_events(self.directory / "events")
        if self.kind == "redis":
            return read_redis_stream(self.redis_url(), self.name)
        if self.kind == "redis-cluster":
            assert self.redis_cluster is not None
            return read_redis_cluster_shards(self.redis_cluster.url, self.name)
        if self.kind == "kafka":
            return [orjson.loads(value) for _key, value, _partition in self.read_kafka()]
        assert self.mongo is not None
        return read_mongo_collection(self.mongo.uri, self.name, "events")

    def read_ids(self) -> list[str]:
        return [str(record["event_id"]) for record in self.read_records()]

    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def read_kafka(self) -> list[tuple[bytes, bytes, int]]:
        """(key, value, partition) of every record of the test's topic."""
        assert self.kafka is not None
        return read_kafka_topic(self.kafka.bootstrap_servers, self.name)

    @property
    def store_name(self) -> str:
        """The store's name (EventStore.name): a Redis Cluster is the redis store."""
        return "redis" if self.kind == "redis-cluster" else self.kind

    @property
    def dedupes(self) -> bool:
        """Whether this store keeps an id once (Kafka: at least once)."""
        return self.kind in DEDUPING_STORE_KINDS


def read_redis_stream(url: str, stream: str) -> list[dict[str, Any]]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    entries: list[tuple[str, dict[str, str]]] = []
    try:
        # In pages: one XRANGE of millions of entries outlasts the socket timeout.
        start = "-"
        while True:
            page = cast(
                list[tuple[str, dict[str, str]]],
                client.xrange(stream, min=start, count=REDIS_READ_PAGE),
            )
            entries += page
            if len(page) < REDIS_READ_PAGE:
                break
            start = "(" + page[-1][0]
    finally:
        client.close()
    return _stream_records(entries)


def _stream_records(entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    records = []
    for _entry_id, fields in entries:
        record: dict[str, Any] = dict(fields)
        for name in STRING_MAP_FIELDS:  # JSON text fields
            if name in record:
                record[name] = orjson.loads(record[name])
        records.append(record)
    return records


def read_redis_cluster_shards(url: str, stream: str) -> list[dict[str, Any]]:
    """Every entry of every shard stream, the way a consumer finds them: the list
    `<stream>:shards`, then XRANGE of each shard through a cluster client; shard
    by shard, each in its own order. No list (nothing ever opened): empty."""
    import redis
    from redis.cluster import RedisCluster

    client: RedisCluster | None = None
    for node_url in url.split(","):  # the first node that answers (some may be killed)
        try:
            client = RedisCluster.from_url(node_url, decode_responses=True, socket_timeout=5)
            break
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
            continue
    assert client is not None, f"no node of {url} answers"
    try:
        shards = cast(list[str], client.lrange(f"{stream}:shards", 0, -1))
        records = []
        for shard in shards:
            records.extend(
                _stream_records(cast(list[tuple[str, dict[str, str]]], client.xrange(shard)))
            )
    finally:
        client.close()
    return records


def read_mongo_collection(uri: str, database: str, collection: str) -> list[dict[str, Any]]:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        return list(client[database][collection].find({}))
    finally:
        client.close()


def read_kafka_topic(bootstrap_servers: str, topic: str) -> list[tuple[bytes, bytes, int]]:
    """Every record of the topic, from the beginning of each partition to its end:
    (key, value, partition), in partition order.

    A plain consumer (no group offsets) assigned to every partition, reading
    until each partition reported its end (PARTITION_EOF, at the fetch's high
    watermark). Not get_watermark_offsets: Tansu 0.6 answers ListOffsets with
    less than the end when a partition holds several record batches. A topic
    that does not exist reads as empty.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"aep-tests-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        partitions = sorted(found.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: dict[int, list[tuple[bytes, bytes, int]]] = {p: [] for p in partitions}
        unfinished = set(partitions)
        deadline = time.monotonic() + KAFKA_READ_TIMEOUT_S
        while unfinished:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"topic {topic!r}: partitions {sorted(unfinished)} not read to their end "
                    f"within {KAFKA_READ_TIMEOUT_S}s"
                )
            for message in consumer.consume(1000, 0.5):
                partition = message.partition()
                assert partition is not None
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        unfinished.discard(partition)
                        continue
                    raise AssertionError(f"reading {topic!r}: {error}")
                key = message.key()
                value = message.value()
                assert isinstance(key, bytes) and isinstance(value, bytes)
                records[partition].append((key, value, partition))
        return [record for p in partitions for record in records[p]]
    finally:
        consumer.close()
