"""MongoDB store, on PyMongo's native asyncio API (pymongo.AsyncMongoClient).

Not motor: MongoDB deprecated motor in May 2025 (end of life May 2026) in
favour of this API.

Stored form: database `database.mongodb.database` (default `ad_events`),
collection `database.mongodb.collection` (default `events`), one document per
event with `_id` = `event_id` (the `event_id` field is kept as well, so the
document has every stored-form key), `timestamp` and `received_at` as BSON
dates (millisecond precision, as BSON dates are), `attributes` as a
sub-document.

Idempotency: `_id` is unique, so an id is stored at most once for as long as
its document exists (forever, unless `ttl` expires it), across retries,
replays and replicas. Batches go in as one `insert_many(ordered=False)`;
duplicate-key errors (code 11000) are counted as duplicates, any other error
fails the batch and the pipeline retries it (the documents that did go in
then count as duplicates).

Indexes are created at start-up: (ad_id, timestamp), (user_id, timestamp),
and with `ttl` > 0 a TTL index on received_at.

Durability is the write concern of the URI (e.g. `?w=majority&journal=true`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pymongo
from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from aep.events.block import EventBatch
from aep.events.schema import KEY_FIELD, EventRecord, FieldKind, stored_names
from aep.settings import DatabaseSettings, MongoStoreSettings
from aep.storage.base import StoreError, WriteResult, redact_credentials

DUPLICATE_KEY = 11000
INDEX_OPTIONS_CONFLICT = 85
DATE_FIELDS = stored_names(FieldKind.TIMESTAMP)
TTL_INDEX_NAME = "received_at_ttl"

Document = dict[str, Any]


def to_document(record: EventRecord) -> Document:
    document: Document = {"_id": record[KEY_FIELD], **record}
    for field in DATE_FIELDS:
        value = document.get(field)
        if isinstance(value, str):
            # RFC 3339 with a trailing Z; fromisoformat reads it since Python 3.11.
            document[field] = datetime.fromisoformat(value)
    return document


class MongoStore:
    """EventStore inserting into a MongoDB collection; see the module docstring."""

    def __init__(
        self, settings: MongoStoreSettings, *, connect_timeout: float, operation_timeout: float
    ) -> None:
        self._settings = settings
        self._connect_timeout = connect_timeout
        self._operation_timeout = operation_timeout
        self._client: AsyncMongoClient[Document] | None = None
        self._collection: AsyncCollection[Document] | None = None

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, worker_count: int) -> MongoStore:
        return cls(
            settings.mongodb,
            connect_timeout=settings.connect_timeout,
            operation_timeout=settings.operation_timeout,
        )

    @property
    def name(self) -> str:
        return "mongodb"

    async def open(self) -> None:
        settings = self._settings
        if self._client is None:
            self._client = AsyncMongoClient(
                settings.uri,
                appname="ad-event-processor",
                tz_aware=True,
                connectTimeoutMS=int(self._connect_timeout * 1000),
                serverSelectionTimeoutMS=int(self._connect_timeout * 1000),
                # Client-side operation timeout: bounds every call, retries included.
                timeoutMS=int(self._operation_timeout * 1000),
            )
            self._collection = self._client[settings.database][settings.collection]
        try:
            await self.ping()
            await self._create_indexes()
        except StoreError:
            await self.close()
            raise

    async def _create_indexes(self) -> None:
        collection = self._require_collection()
        indexes = [
            IndexModel([("ad_id", ASCENDING), ("timestamp", ASCENDING)], name="ad_id_timestamp"),
            IndexModel(
                [("user_id", ASCENDING), ("timestamp", ASCENDING)], name="user_id_timestamp"
            ),
        ]
        ttl = round(self._settings.ttl)
        try:
            await collection.create_indexes(indexes)
            if ttl > 0:
                await self._ensure_ttl_index(collection, ttl)
        except PyMongoError as error:
            raise StoreError(f"mongodb store: creating indexes: {error}") from error

    async def _ensure_ttl_index(self, collection: AsyncCollection[Document], ttl: int) -> None:
        ttl_index = IndexModel(
            [("received_at", ASCENDING)], name=TTL_INDEX_NAME, expireAfterSeconds=ttl
        )
        try:
            await collection.create_indexes([ttl_index])
        except OperationFailure as error:
            if error.code != INDEX_OPTIONS_CONFLICT:
                raise
            # The index exists with another expiry (ttl changed): change it in place.
            await collection.database.command(
                "collMod",
                collection.name,
                index={"keyPattern": {"received_at": ASCENDING}, "expireAfterSeconds": ttl},
            )

    def _require_collection(self) -> AsyncCollection[Document]:
        if self._collection is None:
            raise StoreError("mongodb store: not open")
        return self._collection

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        collection = self._require_collection()
        if not batch.count:
            return WriteResult(written=0, duplicates=0)
        records = batch.records()
        try:
            documents = [to_document(record) for record in records]
        except (KeyError, ValueError) as error:
            raise StoreError(f"mongodb store: not a stored-form event: {error!r}") from error
        try:
            result = await collection.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            return self._result_of_partial_insert(error, len(documents))
        except PyMongoError as error:
            raise StoreError(
                f"mongodb store: insert into {collection.full_name}: {error}"
            ) from error
        written = len(result.inserted_ids)
        return WriteResult(written=written, duplicates=len(documents) - written)

    def _result_of_partial_insert(self, error: BulkWriteError, count: int) -> WriteResult:
        details = error.details
        write_errors: list[dict[str, Any]] = details.get("writeErrors", [])
        others = [e for e in write_errors if e.get("code") != DUPLICATE_KEY]
        if others or details.get("writeConcernErrors"):
            first = others[0] if others else details["writeConcernErrors"][0]
            raise StoreError(
                f"mongodb store: {len(others)} of {count} documents refused "
                f"(first: code {first.get('code')}: {first.get('errmsg')})"
            ) from error
        written = int(details.get("nInserted", count - len(write_errors)))
        return WriteResult(written=written, duplicates=count - written)

    async def ping(self) -> None:
        client = self._client
        if client is None:
            raise StoreError("mongodb store: not open")
        try:
            # timeoutMS (operation_timeout) would bound server selection too;
            # a ping answers within connect_timeout or the store counts as down.
            with pymongo.timeout(self._connect_timeout):
                # Selects the primary (the default read preference), so a
                # replica set without a writable primary fails here.
                await client.admin.command("ping")
        except PyMongoError as error:
            raise StoreError(
                f"mongodb store at {redact_credentials(self._settings.uri)}: {error}"
            ) from error

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._collection = None
            await client.close()
