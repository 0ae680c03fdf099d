"""What only the Redis store does, against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from aep.events.schema import EventRecord
from aep.storage import StoreError
from aep.storage.redis import counter_key, dedupe_key
from tests.helpers.backends import Backend
from tests.helpers.servers import RedisServer
from tests.helpers.support import batch_of
from tests.stores.test_store_contract import events


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend("redis", tmp_path, redis=request.getfixturevalue("redis_server"))


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


async def test_entries_are_flat_stored_form_fields(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    record: EventRecord = events(0, 1)[0]
    store = await redis_backend.open_store()
    try:
        await store.write_batch(batch_of([record]))
    finally:
        await store.close()
    entries = cast(list[tuple[str, dict[str, str]]], admin.xrange(redis_backend.name))
    [(_entry_id, fields)] = entries
    expected = {key: str(value) for key, value in record.items() if key != "attributes"}
    expected["attributes"] = '{"n":"0"}'  # a JSON string field
    assert fields == expected
    assert fields["timestamp"].endswith("Z")


async def test_entries_keep_the_batch_order(redis_backend: Backend) -> None:
    store = await redis_backend.open_store()
    try:
        await store.write_batch(batch_of(events(0, 50)))
    finally:
        await store.close()
    assert redis_backend.read_ids() == [f"e{i}" for i in range(50)]


async def test_max_len_trims_approximately(redis_backend: Backend, admin: redis.Redis) -> None:
    store = await redis_backend.open_store(max_len=100)
    try:
        for start in range(0, 3000, 500):
            await store.write_batch(batch_of(events(start, 500)))
    finally:
        await store.close()
    length = admin.xlen(redis_backend.name)
    assert 100 <= length < 3000
    # The newest entries are the ones kept.
    assert redis_backend.read_ids()[-1] == "e2999"


async def test_an_id_is_appended_again_only_after_the_dedupe_window(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    store = await redis_backend.open_store(dedupe_window=1)
    try:
        await store.write_batch(batch_of(events(0, 3)))
        ttl = admin.ttl(dedupe_key(redis_backend.name, "e0"))
        within = await store.write_batch(batch_of(events(0, 3)))
        await asyncio.sleep(1.2)
        after = await store.write_batch(batch_of(events(0, 3)))
    finally:
        await store.close()
    assert ttl == 1
    assert (within.written, within.duplicates) == (0, 3)
    assert (after.written, after.duplicates) == (3, 0)
    assert len(redis_backend.read_ids()) == 6


async def test_counters_count_new_events_per_minute_ad_and_type(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    batch = events(0, 14)  # ad-0 .. ad-6, twice each, all clicks
    minute = str(batch[0]["timestamp"])[:16]
    store = await redis_backend.open_store(counters=True, counters_ttl=3600)
    try:
        await store.write_batch(batch_of(batch))
        await store.write_batch(batch_of(batch))  # duplicates are not counted
    finally:
        await store.close()
    key = counter_key(redis_backend.name, minute)
    counts = admin.hgetall(key)
    assert counts == {f"ad-{ad}|EVENT_TYPE_CLICK": "2" for ad in range(7)}
    assert 0 < admin.ttl(key) <= 3600


async def test_counters_are_off_by_default(redis_backend: Backend, admin: redis.Redis) -> None:
    store = await redis_backend.open_store()
    try:
        await store.write_batch(batch_of(events(0, 5)))
    finally:
        await store.close()
    assert admin.keys(f"{{{redis_backend.name}}}:counts:*") == []


async def test_works_after_the_script_cache_is_flushed(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    store = await redis_backend.open_store()
    try:
        await store.write_batch(batch_of(events(0, 5)))
        admin.script_flush()  # what a Redis restart does to EVALSHA
        result = await store.write_batch(batch_of(events(3, 5)))
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (3, 2)


async def test_a_redis_refusing_writes_fails_ping_and_writes_and_recovers(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    store = await redis_backend.open_store()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # everything is over the limit now: writes get OOM
    try:
        with pytest.raises(StoreError, match="maxmemory"):
            await store.ping()
        with pytest.raises(StoreError, match="maxmemory"):
            await store.write_batch(batch_of(events(0, 5)))
    finally:
        admin.config_set("maxmemory", "0")
    try:
        await store.ping()
        result = await store.write_batch(batch_of(events(0, 5)))
    finally:
        await store.close()
    assert result.written == 5
    assert redis_backend.read_ids() == [f"e{i}" for i in range(5)]


async def test_racing_writes_of_the_same_ids_to_a_refusing_redis_both_fail(
    redis_backend: Backend, admin: redis.Redis
) -> None:
    """The append script checks and sets the dedupe key atomically with the XADD, so a
    concurrent write of the same ids cannot be told "duplicate" for a failing one."""
    store = await redis_backend.open_store(writers=2)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        results = await asyncio.gather(
            store.write_batch(batch_of(events(0, 5))),
            store.write_batch(batch_of(events(0, 5))),
            return_exceptions=True,
        )
    finally:
        admin.config_set("maxmemory", "0")
    try:
        again = await store.write_batch(batch_of(events(0, 5)))
    finally:
        await store.close()
    assert all(isinstance(result, StoreError) for result in results), results
    assert (again.written, again.duplicates) == (5, 0)


async def test_a_redis_that_stops_answering_fails_ping_within_the_connect_timeout(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "frozen")
    server.start()
    try:
        backend = Backend("redis", tmp_path, redis=server)
        store = await backend.open_store()  # connect_timeout=2s in these settings
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"no answer within 2\.0s"):
                await store.ping()
            assert time.monotonic() - started < 5
        finally:
            server.process.send_signal(signal.SIGCONT)
        await store.ping()
        await store.close()
    finally:
        server.stop()


def _stream_length(server: RedisServer, stream: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return client.xlen(stream)
    finally:
        client.close()


async def test_with_min_replicas_acked_a_batch_is_written_once_its_replica_has_it(
    tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = replicated
    backend = Backend("redis", tmp_path, redis=primary)
    store = await backend.open_store(min_replicas_acked=1)
    try:
        result = await store.write_batch(batch_of(events(0, 20)))
        # WAIT returned: the replica has processed the batch, read there at once.
        assert (result.written, _stream_length(replica, backend.name)) == (20, 20)
        replica.pause()  # connected, confirming nothing
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"0 of database\.redis\.min_replicas_acked=1"):
                await store.write_batch(batch_of(events(20, 10)))
            assert time.monotonic() - started < 5  # replica_ack_timeout (1 s), not forever
            assert _stream_length(primary, backend.name) == 30  # on the primary only
        finally:
            replica.resume()
        # The pipeline's retry: the events are found by their dedupe keys, and the
        # write counts once the replica has them too.
        again = await store.write_batch(batch_of(events(20, 10)))
        assert (again.written, again.duplicates) == (0, 10)
        assert _stream_length(replica, backend.name) == 30
    finally:
        await store.close()


async def test_a_retry_that_appends_nothing_still_waits_for_the_replica(
    tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    """The retry runs on another connection (here: another store, as after a restart)
    and writes nothing, all its events being there. WAIT is documented to cover the
    writes of its own connection; the store first refreshes the stream's alive key
    (a replicated write) so that it covers the earlier attempt's writes too. (Redis
    7.0.15, here, already counts from the offset of the connection's last command of
    any kind, so on it this passes without that write as well: it holds the
    behaviour, on any Redis.)"""
    primary, replica = replicated
    backend = Backend("redis", tmp_path, redis=primary)
    replica.pause()
    try:
        first = await backend.open_store(min_replicas_acked=1, replica_ack_timeout=0.3)
        try:
            with pytest.raises(StoreError, match=r"replicas confirmed the batch within 0\.3s"):
                await first.write_batch(batch_of(events(0, 10)))
        finally:
            await first.close()
        second = await backend.open_store(min_replicas_acked=1, replica_ack_timeout=0.3)
        try:
            with pytest.raises(StoreError, match=r"0 of database\.redis\.min_replicas_acked=1"):
                await second.write_batch(batch_of(events(0, 10)))
        finally:
            await second.close()
    finally:
        replica.resume()
    third = await backend.open_store(min_replicas_acked=1)
    try:
        result = await third.write_batch(batch_of(events(0, 10)))
    finally:
        await third.close()
    assert (result.written, result.duplicates) == (0, 10)
    assert _stream_length(replica, backend.name) == 10


async def test_without_min_replicas_acked_a_write_counts_once_the_primary_has_it(
    tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    """The default, for contrast: a replica that confirms nothing does not hold writes up."""
    primary, replica = replicated
    backend = Backend("redis", tmp_path, redis=primary)
    store = await backend.open_store()
    replica.pause()
    try:
        result = await store.write_batch(batch_of(events(0, 10)))
    finally:
        replica.resume()
        await store.close()
    assert result.written == 10


async def test_a_batch_waiting_on_a_paused_redis_holds_little_memory_per_event(
    tmp_path: Path,
) -> None:
    """What each writer holds while Redis does not answer (the queue-memory bound's
    premise). It was ~8 KB an event: one orjson.dumps result per event as a script
    argument, and orjson leaves ~8 KB allocated behind each small result."""
    server = RedisServer(tmp_path / "paused")
    server.start()
    count = 2000
    try:
        backend = Backend("redis", tmp_path, redis=server)
        store = await backend.open_store()
        batch = batch_of(events(0, count))
        admin = redis.Redis.from_url(server.url)
        tracemalloc.start()
        try:
            admin.client_pause(30_000, all=False)  # writes wait, the connection stays up
            before = tracemalloc.get_traced_memory()[0]
            write = asyncio.create_task(store.write_batch(batch))
            await asyncio.sleep(1.0)
            assert not write.done()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            admin.client_unpause()
            admin.close()
        result = await write
        await store.close()
    finally:
        server.stop()
    assert result.written == count
    print(f"a batch of {count} in flight holds {held / count:.0f} B per event")
    assert held / count < 3000
