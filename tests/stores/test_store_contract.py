"""The EventStore contract, for every store, against real servers (redis-server, alone
and as a 3-master cluster, nx-27017, Tansu).

The file, Redis and MongoDB stores keep an event_id once: a repeated id is
counted as a duplicate and not stored. Kafka is at least once by design (no
broker-side dedupe): every write appends, `duplicates` is 0, and the topic
holds exactly what was written, repeats included. Tests that send an id more
than once state both expectations, chosen by backend.dedupes."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from aep.events.schema import (
    KEY_FIELD,
    STORED_FIELD_NAMES,
    STORED_FIELDS,
    EventRecord,
    FieldKind,
    format_epoch,
)
from aep.storage import EventStore, StoreError
from tests.helpers.backends import Backend
from tests.helpers.servers import RedisClusterServer
from tests.helpers.support import batch_of, free_port, full_stored_record, stored_forms, valid_event


def events(start: int, count: int, prefix: str = "e") -> list[EventRecord]:
    return stored_forms(
        [
            valid_event(event_id=f"{prefix}{i}", ad_id=f"ad-{i % 7}", attributes={"n": str(i)})
            for i in range(start, start + count)
        ],
        format_epoch(1_790_000_000.5),
    )


def assert_stored_exactly_once(backend: Backend, expected: set[str]) -> None:
    ids = backend.read_ids()
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    assert not repeated, f"stored more than once: {repeated[:5]}"
    assert set(ids) == expected


def assert_stored(backend: Backend, written: list[list[EventRecord]]) -> None:
    """A deduping store holds each id of these writes once; Kafka holds every record
    of every write (at least once: each id as often as it was written, no more)."""
    sent = [str(record["event_id"]) for records in written for record in records]
    if backend.dedupes:
        assert_stored_exactly_once(backend, set(sent))
    else:
        assert Counter(backend.read_ids()) == Counter(sent)


def counts(backend: Backend, *, deduped: tuple[int, int], appended: int) -> tuple[int, int]:
    """(written, duplicates) a write returns: a deduping store's, or Kafka's (all appended)."""
    return deduped if backend.dedupes else (appended, 0)


async def test_write_and_read_back(backend: Backend) -> None:
    store = await backend.open_store()
    try:
        result = await store.write_batch(batch_of(events(0, 20)))
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (20, 0)
    stored = {str(r["event_id"]): r for r in backend.read_records()}
    assert set(stored) == {f"e{i}" for i in range(20)}
    sample = stored["e3"]
    assert sample["ad_id"] == "ad-3"
    assert sample["user_id"] == "user-1"
    assert sample["event_type"] == "EVENT_TYPE_CLICK"
    assert sample["attributes"] == {"n": "3"}


def in_backend_form(kind: str, record: EventRecord) -> dict[str, Any]:
    """How the backend's own client reads this record back, field by field."""
    if kind == "file":
        return record
    form: dict[str, Any] = {}
    if kind == "mongodb":
        form["_id"] = record[KEY_FIELD]
    for field in STORED_FIELDS:
        value = record[field.name]
        if kind in ("redis", "redis-cluster") and field.kind is FieldKind.INT64:
            value = str(value)  # stream fields are text; maps are JSON text, read back
        elif kind == "mongodb" and field.kind is FieldKind.TIMESTAMP:
            exact = datetime.fromisoformat(value)  # BSON dates keep milliseconds
            value = exact.replace(microsecond=exact.microsecond // 1000 * 1000)
        form[field.name] = value
    return form


async def test_every_stored_field_reaches_the_store_in_order(backend: Backend) -> None:
    """A record with every field of the schema set, none to its default, is stored whole."""
    record = full_stored_record()
    store = await backend.open_store()
    try:
        result = await store.write_batch(batch_of([record]))
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (1, 0)
    [stored] = backend.read_records()
    assert stored == in_backend_form(backend.kind, record)
    assert [key for key in stored if key != "_id"] == list(STORED_FIELD_NAMES)


async def test_duplicates_within_a_batch_and_across_batches(backend: Backend) -> None:
    writes = [[*events(0, 10), *events(0, 3), *events(5, 2)], events(8, 10), events(0, 18)]
    store = await backend.open_store()
    try:
        first, second, replay = [await store.write_batch(batch_of(w)) for w in writes]
    finally:
        await store.close()
    assert (first.written, first.duplicates) == counts(backend, deduped=(10, 5), appended=15)
    assert (second.written, second.duplicates) == counts(backend, deduped=(8, 2), appended=10)
    assert (replay.written, replay.duplicates) == counts(backend, deduped=(0, 18), appended=18)
    assert_stored(backend, writes)


async def test_dedupe_holds_across_a_reopen(backend: Backend) -> None:
    store = await backend.open_store()
    try:
        await store.write_batch(batch_of(events(0, 50)))
    finally:
        await store.close()
    reopened = await backend.open_store()
    try:
        result = await reopened.write_batch(batch_of(events(25, 50)))
    finally:
        await reopened.close()
    assert (result.written, result.duplicates) == counts(backend, deduped=(25, 25), appended=50)
    assert_stored(backend, [events(0, 50), events(25, 50)])


async def test_two_replicas_sharing_the_server_store_each_id_once(
    network_backend: Backend,
) -> None:
    backend = network_backend
    replica_a = await backend.open_store()
    replica_b = await backend.open_store()
    try:
        # Both replicas get the same 2000 ids (a client retrying on the other
        # replica), in different batch cuts, concurrently.
        ids = list(range(2000))
        writes = []
        for replica, size in ((replica_a, 100), (replica_b, 37)):
            order = ids[:]
            random.Random(size).shuffle(order)
            for offset in range(0, len(order), size):
                chunk = [events(i, 1)[0] for i in order[offset : offset + size]]
                writes.append(replica.write_batch(batch_of(chunk)))
        results = await asyncio.gather(*writes)
    finally:
        await replica_b.close()
        await replica_a.close()
    written = sum(r.written for r in results)
    duplicates = sum(r.duplicates for r in results)
    assert (written, duplicates) == counts(backend, deduped=(2000, 2000), appended=4000)
    assert_stored(backend, [events(0, 2000), events(0, 2000)])


async def test_concurrent_writers_on_one_store(backend: Backend) -> None:
    store = await backend.open_store(writers=4)
    try:
        # 10 concurrent batches over 4 writers, overlapping: ids 0..1199, most sent 3 times.
        results = await asyncio.gather(
            *(store.write_batch(batch_of(events(start * 100, 300))) for start in range(10))
        )
    finally:
        await store.close()
    assert sum(r.written for r in results) == (1200 if backend.dedupes else 3000)
    assert sum(r.written + r.duplicates for r in results) == 3000
    assert_stored(backend, [events(start * 100, 300) for start in range(10)])


async def test_large_batch(backend: Backend) -> None:
    store = await backend.open_store()
    try:
        result = await store.write_batch(batch_of(events(0, 10_000)))
        again = await store.write_batch(batch_of(events(5_000, 10_000)))
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (10_000, 0)
    assert (again.written, again.duplicates) == counts(
        backend, deduped=(5_000, 5_000), appended=10_000
    )
    assert_stored(backend, [events(0, 10_000), events(5_000, 10_000)])


async def test_empty_batch_writes_nothing(backend: Backend) -> None:
    store = await backend.open_store()
    try:
        result = await store.write_batch(batch_of([]))
        await store.ping()
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (0, 0)
    assert backend.read_records() == []


async def test_a_store_that_is_not_open_refuses_writes(network_backend: Backend) -> None:
    store: EventStore = network_backend.make_store()
    with pytest.raises(StoreError, match="not open"):
        await store.write_batch(batch_of(events(0, 1)))
    with pytest.raises(StoreError, match="not open"):
        await store.ping()


# PyMongo's monitor leaks the socket of a connect it was cancelled in (by
# close) while the server is unreachable; collected here, inside the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_unreachable_server_fails_open_within_the_connect_timeout(
    network_backend: Backend,
) -> None:
    backend = network_backend
    # Nothing listens on a fresh free port.
    if backend.redis is not None:
        backend.redis = replace(backend.redis, port=free_port())
    if backend.redis_cluster is not None:  # nodes on fresh ports, never started
        backend.redis_cluster = RedisClusterServer(backend.directory / "never-started")
    if backend.mongo is not None:
        backend.mongo = replace(backend.mongo, port=free_port())
    if backend.kafka is not None:
        backend.kafka = replace(backend.kafka, port=free_port())
    store = backend.make_store()
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"{backend.store_name} store"):
        await store.open()
    assert time.monotonic() - started < 10  # connect_timeout is 2s in these settings
    await store.close()  # harmless after a failed open
    gc.collect()
