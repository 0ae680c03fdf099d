"""What only the MongoDB store does, against a real nx-27017 (MongoDB wire protocol)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from aep.storage.mongodb import to_document
from tests.helpers.backends import Backend
from tests.helpers.servers import MongoServer
from tests.helpers.support import batch_of
from tests.stores.test_store_contract import events


@pytest.fixture
def mongo_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend("mongodb", tmp_path, mongo=request.getfixturevalue("mongo_server"))


@pytest.fixture
def admin(mongo_server: MongoServer) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_server.uri, tz_aware=True)
    yield client
    client.close()


async def test_documents_have_the_event_id_as_id_and_bson_dates(
    mongo_backend: Backend, admin: MongoClient[dict[str, Any]]
) -> None:
    record = events(0, 1)[0]
    store = await mongo_backend.open_store()
    try:
        await store.write_batch(batch_of([record]))
    finally:
        await store.close()
    [document] = admin[mongo_backend.name]["events"].find({})
    assert document["_id"] == document["event_id"] == "e0"
    for field in ("timestamp", "received_at"):
        assert isinstance(document[field], datetime), field
        # BSON dates keep milliseconds.
        expected = datetime.fromisoformat(str(record[field]))
        assert abs((document[field] - expected).total_seconds()) < 0.001
    assert document["received_at"] == datetime.fromtimestamp(1_790_000_000.5, UTC)
    assert document["attributes"] == {"n": "0"}
    assert document["event_type"] == "EVENT_TYPE_CLICK"
    assert {k for k in document if k != "_id"} == set(record)


def test_to_document_parses_rfc3339_z_timestamps() -> None:
    document = to_document({"event_id": "x", "timestamp": "2026-11-26T19:00:00.123456Z"})
    assert document["_id"] == "x"
    assert document["timestamp"] == datetime(2026, 11, 26, 19, 0, 0, 123456, tzinfo=UTC)


def index_keys(admin: MongoClient[dict[str, Any]], database: str) -> dict[tuple[Any, ...], Any]:
    """Key pattern -> expireAfterSeconds (None without)."""
    info = admin[database]["events"].index_information()
    return {tuple(spec["key"]): spec.get("expireAfterSeconds") for spec in info.values()}


async def test_indexes_are_created_at_start_up(
    mongo_backend: Backend, admin: MongoClient[dict[str, Any]]
) -> None:
    store = await mongo_backend.open_store()
    await store.close()
    keys = index_keys(admin, mongo_backend.name)
    assert keys[(("ad_id", 1), ("timestamp", 1))] is None
    assert keys[(("user_id", 1), ("timestamp", 1))] is None
    assert (("received_at", 1),) not in keys  # no TTL index unless configured


async def test_ttl_index_by_config(
    mongo_backend: Backend, admin: MongoClient[dict[str, Any]]
) -> None:
    store = await mongo_backend.open_store(ttl=7 * 86400)
    await store.close()
    assert index_keys(admin, mongo_backend.name)[(("received_at", 1),)] == 7 * 86400
    changed = await mongo_backend.open_store(ttl=86400)  # a new setting applies at start-up
    await changed.close()
    assert index_keys(admin, mongo_backend.name)[(("received_at", 1),)] == 86400
