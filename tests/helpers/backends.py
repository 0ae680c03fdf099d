"""One store under test: its settings, new store instances, and its stored events
read back with the backend's own client (not through our store code)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from aep.events.schema import FieldKind, stored_names
from aep.settings import (
    DatabaseSettings,
    FileStoreSettings,
    MongoStoreSettings,
    RedisStoreSettings,
    StoreType,
)
from aep.storage import EventStore, create_store
from tests.helpers.servers import MongoServer, RedisServer
from tests.helpers.support import stored_events

STRING_MAP_FIELDS = stored_names(FieldKind.STRING_MAP)
STORE_KINDS = ["file", "redis", "mongodb"]
NETWORK_STORE_KINDS = ["redis", "mongodb"]


@dataclass
class Backend:
    kind: str
    directory: Path
    redis: RedisServer | None = None
    mongo: MongoServer | None = None
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
        assert self.mongo is not None
        return read_mongo_collection(self.mongo.uri, self.name, "events")

    def read_ids(self) -> list[str]:
        return [str(record["event_id"]) for record in self.read_records()]

    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url


def read_redis_stream(url: str, stream: str) -> list[dict[str, Any]]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream))
    finally:
        client.close()
    records = []
    for _entry_id, fields in entries:
        record: dict[str, Any] = dict(fields)
        for name in STRING_MAP_FIELDS:  # JSON text fields
            if name in record:
                record[name] = orjson.loads(record[name])
        records.append(record)
    return records


def read_mongo_collection(uri: str, database: str, collection: str) -> list[dict[str, Any]]:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        return list(client[database][collection].find({}))
    finally:
        client.close()
