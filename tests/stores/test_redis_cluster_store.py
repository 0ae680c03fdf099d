"""What only the Redis store in cluster mode does, against a real 3-master Redis
Cluster of Debian's redis-server (6 processes, one replica per master): shard
naming and spread, one script call per shard per batch, dedupe and counts
across partial failures, retries and replays, per-shard counters, ping, and the
real service under load while a master is SIGKILLed and its replica promoted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from aep.settings import ConfigError, RedisStoreSettings, load_settings
from aep.storage import StoreError
from aep.storage.redis import (
    RedisStore,
    shard_counter_key,
    shard_dedupe_key,
    shard_list_key,
    shard_of,
    shard_streams,
    shard_tags,
)
from tests.helpers.backends import Backend
from tests.helpers.servers import RedisClusterNode, RedisClusterServer
from tests.helpers.support import ServerProcess, batch_of, scrape, valid_event
from tests.stores.test_store_contract import assert_stored_exactly_once, events


@pytest.fixture
def cluster_backend(redis_cluster: RedisClusterServer, tmp_path: Path) -> Backend:
    return Backend("redis-cluster", tmp_path, redis_cluster=redis_cluster)


@pytest.fixture
def admin(redis_cluster: RedisClusterServer) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.nodes[0].url, decode_responses=True)
    yield client
    client.close()


def open_cluster_store(backend: Backend, **section: Any) -> RedisStore:
    store = backend.make_store(**section)
    assert isinstance(store, RedisStore)
    return store


def master_ports(cluster: RedisClusterServer, keys: list[str]) -> Counter[int]:
    """How many of these (existing) keys each master holds, by the masters' own
    answers: the owner answers EXISTS, every other master answers MOVED."""
    held: Counter[int] = Counter()
    for master in cluster.live_masters():
        client = master.admin()
        try:
            for key in keys:
                try:
                    if client.exists(key):
                        held[master.port] += 1
                except redis.exceptions.MovedError:
                    pass
        finally:
            client.close()
    return held


# -- settings --------------------------------------------------------------------------


def test_cluster_and_shards_settings_and_their_env_vars() -> None:
    settings = load_settings(
        environ={
            "AEP_DATABASE_TYPE": "redis",
            "AEP_DATABASE_REDIS_CLUSTER": "true",
            "AEP_DATABASE_REDIS_SHARDS": "32",
            "AEP_DATABASE_REDIS_URL": "redis://a:7000/0,redis://b:7001/0",
        }
    )
    assert settings.database.redis.cluster is True
    assert settings.database.redis.shards == 32
    defaults = RedisStoreSettings()
    assert (defaults.cluster, defaults.shards) == (False, 16)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AEP_DATABASE_REDIS_SHARDS": "0"}, "shards"),
        ({"AEP_DATABASE_REDIS_SHARDS": "1025"}, "shards"),
        ({"AEP_DATABASE_REDIS_URL": "redis://a:1/0,redis://b:2/0"}, "cluster: true"),
        (
            {"AEP_DATABASE_REDIS_CLUSTER": "true", "AEP_DATABASE_REDIS_STREAM": "a{b}"},
            "no { or }",
        ),
    ],
)
def test_refused_cluster_settings(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={"AEP_DATABASE_TYPE": "redis", **environ})


def test_shard_tags_spread_evenly_over_the_slot_space() -> None:
    for shards in (1, 3, 16, 100, 1024):
        slots = [key_slot(f"s:{{{tag}}}".encode()) for tag in shard_tags(shards)]
        # Shard i's slot lies in the i-th of `shards` equal ranges of the 16384 slots.
        assert [slot * shards // 16384 for slot in slots] == list(range(shards))
    assert shard_streams("ad_events", 2) == [f"ad_events:{{{tag}}}" for tag in shard_tags(2)]
    assert all(tag.startswith(f"{i}:") for i, tag in enumerate(shard_tags(16)))


# -- against the session's cluster -----------------------------------------------------


async def test_shard_streams_are_named_listed_and_spread_over_all_three_masters(
    cluster_backend: Backend, admin: RedisCluster, redis_cluster: RedisClusterServer
) -> None:
    store = open_cluster_store(cluster_backend)
    await store.open()
    try:
        await store.write_batch(batch_of(events(0, 400)))
    finally:
        await store.close()
    name = cluster_backend.name
    streams = store.shard_streams
    assert len(streams) == 16
    assert streams == [f"{name}:{{{tag}}}" for tag in shard_tags(16)]
    assert admin.lrange(shard_list_key(name), 0, -1) == streams
    spread = master_ports(redis_cluster, streams)
    masters = {node.port for node in redis_cluster.live_masters()}
    assert set(spread) == masters and len(masters) == 3
    assert sorted(spread.values()) == [5, 5, 6]  # 16 shards over 3 equal slot ranges
    # Each event is in the shard its id hashes to, its dedupe key in that shard's slot.
    for shard, stream in enumerate(streams):
        entries = cast(list[tuple[str, dict[str, str]]], admin.xrange(stream))
        assert entries, f"shard {stream} is empty after 400 events"
        for _entry_id, fields in entries:
            assert shard_of(fields["event_id"], 16) == shard
            dedupe = shard_dedupe_key(stream, fields["event_id"])
            assert admin.exists(dedupe) == 1
            assert key_slot(dedupe.encode()) == key_slot(stream.encode())


def evalsha_calls(cluster: RedisClusterServer) -> int:
    """EVALSHA calls counted by every live master since its last CONFIG RESETSTAT."""
    total = 0
    for node in cluster.live_masters():
        stats = node.info("commandstats").get("cmdstat_evalsha", {})
        total += int(stats.get("calls", 0))
    return total


def reset_stats(cluster: RedisClusterServer) -> None:
    for node in cluster.nodes:
        client = node.admin()
        try:
            client.config_resetstat()
        finally:
            client.close()


async def test_one_script_call_per_shard_per_batch(
    cluster_backend: Backend, redis_cluster: RedisClusterServer
) -> None:
    store = open_cluster_store(cluster_backend)
    await store.open()
    try:
        await store.write_batch(batch_of(events(10_000, 500)))  # loads the script everywhere
        reset_stats(redis_cluster)
        batches = [events(0, 200), events(200, 3), events(0, 200)]
        for records in batches:
            await store.write_batch(batch_of(records))
        calls = evalsha_calls(redis_cluster)
    finally:
        await store.close()
    expected = sum(len({shard_of(str(r["event_id"]), 16) for r in b}) for b in batches)
    assert expected == 16 + len({shard_of(f"e{i}", 16) for i in range(200, 203)}) + 16
    assert calls == expected


async def test_a_partial_failure_raises_and_its_retry_counts_right(
    cluster_backend: Backend, redis_cluster: RedisClusterServer
) -> None:
    """One master refuses writes (maxmemory): its shards' calls fail, the others'
    succeed; the batch raises. The pipeline's retry of that batch counts every
    event as written once; a replay of the same ids (another batch) as duplicates."""
    store = open_cluster_store(cluster_backend)
    await store.open()
    refusing = redis_cluster.live_masters()[0]
    client = refusing.admin()
    records = events(0, 300)
    batch = batch_of(records)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        try:
            with pytest.raises(StoreError, match=r"of 16 shard appends failed.*maxmemory"):
                await store.write_batch(batch)
            with pytest.raises(StoreError, match="maxmemory"):
                await store.ping()
        finally:
            client.config_set("maxmemory", "0")
        partly = len(cluster_backend.read_ids())
        retry = await store.write_batch(batch)  # the pipeline retries the same batch
        replay = await store.write_batch(batch_of(records))  # a replay: a new batch
        await store.ping()
    finally:
        client.close()
        await store.close()
    assert 0 < partly < 300  # the other masters' shards were written by the failed try
    assert (retry.written, retry.duplicates) == (300, 0)
    assert (replay.written, replay.duplicates) == (0, 300)
    assert_stored_exactly_once(cluster_backend, {f"e{i}" for i in range(300)})


async def test_two_stores_and_replays_store_each_id_once(cluster_backend: Backend) -> None:
    first = open_cluster_store(cluster_backend)
    second = open_cluster_store(cluster_backend)
    await first.open()
    await second.open()
    try:
        a = await first.write_batch(batch_of(events(0, 100)))
        b = await second.write_batch(batch_of(events(50, 100)))  # another replica
        c = await first.write_batch(batch_of([*events(0, 10), *events(0, 10)]))
    finally:
        await second.close()
        await first.close()
    assert (a.written, a.duplicates) == (100, 0)
    assert (b.written, b.duplicates) == (50, 50)
    assert (c.written, c.duplicates) == (0, 20)
    assert_stored_exactly_once(cluster_backend, {f"e{i}" for i in range(150)})


async def test_counters_per_shard_count_new_events(
    cluster_backend: Backend, admin: RedisCluster
) -> None:
    batch = events(0, 14)  # ad-0 .. ad-6, twice each, all clicks
    minute = str(batch[0]["timestamp"])[:16]
    store = open_cluster_store(cluster_backend, counters=True, counters_ttl=3600)
    await store.open()
    try:
        await store.write_batch(batch_of(batch))
        await store.write_batch(batch_of(batch))  # duplicates are not counted
    finally:
        await store.close()
    totals: Counter[str] = Counter()
    for stream in store.shard_streams:
        key = shard_counter_key(stream, minute)
        counts = cast(dict[str, str], admin.hgetall(key))
        if counts:
            assert key_slot(key.encode()) == key_slot(stream.encode())
            assert 0 < admin.ttl(key) <= 3600
        totals.update({field: int(count) for field, count in counts.items()})
    assert totals == {f"ad-{ad}|EVENT_TYPE_CLICK": 2 for ad in range(7)}


async def test_max_len_is_shared_by_the_shards(
    cluster_backend: Backend, admin: RedisCluster
) -> None:
    store = open_cluster_store(cluster_backend, max_len=1600)  # about 100 per shard
    await store.open()
    try:
        for start in range(0, 8000, 1000):
            await store.write_batch(batch_of(events(start, 1000)))
    finally:
        await store.close()
    total = 0
    for stream in store.shard_streams:
        total += admin.xlen(stream)
    assert 1600 <= total < 8000


async def test_a_consumer_reads_every_shard_with_a_group_per_shard_in_arrival_order(
    cluster_backend: Backend, admin: RedisCluster
) -> None:
    """The documented recipe: the shard list, then XREADGROUP per shard stream (one
    XREAD over several shards is refused: CROSSSLOT)."""
    store = open_cluster_store(cluster_backend)
    await store.open()
    try:
        for start in range(0, 300, 50):
            await store.write_batch(batch_of(events(start, 50)))
    finally:
        await store.close()
    shards = cast(list[str], admin.lrange(shard_list_key(cluster_backend.name), 0, -1))
    with pytest.raises(redis.exceptions.RedisClusterException):
        admin.xread({shards[0]: 0, shards[1]: 0})
    read: dict[str, list[str]] = {}
    for shard in shards:
        admin.xgroup_create(shard, "consumers", id="0", mkstream=True)
        replies = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]],
            admin.xreadgroup("consumers", "c1", {shard: ">"}, count=1000),
        )
        read[shard] = [fields["event_id"] for _key, entries in replies for _id, fields in entries]
    everything = [event_id for ids in read.values() for event_id in ids]
    assert sorted(everything) == sorted(f"e{i}" for i in range(300))
    for shard, ids in read.items():  # each shard: the order its events arrived in
        expected = [f"e{i}" for i in range(300) if shards[shard_of(f"e{i}", 16)] == shard]
        assert ids == expected


# -- clusters of their own (nodes get killed) ------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=1000)
    cluster.start()
    yield cluster
    cluster.stop()


async def test_ping_and_writes_fail_when_a_master_and_its_replica_are_down(
    own_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    backend = Backend("redis-cluster", tmp_path, redis_cluster=own_cluster)
    store = open_cluster_store(backend)
    await store.open()  # connect_timeout=2s in these settings
    try:
        await store.ping()
        master, replica = own_cluster.kill_master()
        replica.kill()  # its slots have no node left: the cluster is down
        started = time.monotonic()
        with pytest.raises(StoreError, match="redis store"):
            await store.ping()
        assert time.monotonic() - started < 5
        with pytest.raises(StoreError, match="shard appends failed"):
            await store.write_batch(batch_of(events(0, 100)))
    finally:
        await store.close()
    assert not master.alive and not replica.alive


async def test_a_store_write_across_a_failover_raises_then_recovers(
    own_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """The store's part of a failover: the write during it fails, the retry after the
    promotion stores every event once. What the master had acknowledged is on the
    replica before the kill (the test waits for it): Redis replicates asynchronously,
    and a write not yet replicated is lost with its master (docs/stores.md, Failover)."""
    backend = Backend("redis-cluster", tmp_path, redis_cluster=own_cluster)
    store = open_cluster_store(backend)
    await store.open()
    try:
        await store.write_batch(batch_of(events(0, 200)))
        master = own_cluster.live_masters()[0]
        await asyncio.to_thread(own_cluster.wait_replicated, master)
        _master, replica = own_cluster.kill_master(master)
        with pytest.raises(StoreError):
            await store.write_batch(batch_of(events(200, 200)))
        own_cluster.wait_promoted(replica, timeout_s=20)
        deadline = time.monotonic() + 20
        while True:  # the pipeline's retry, in short
            try:
                result = await store.write_batch(batch_of(events(200, 200)))
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        await store.ping()
    finally:
        await store.close()
    assert result.written + result.duplicates == 200
    assert_stored_exactly_once(backend, {f"e{i}" for i in range(400)})


class CommittedLoad:
    """Client threads sending batches of unique ids with ack mode committed, at most
    `max_batches` each; a failed RPC is retried with the same ids until `stop()`.
    Records which ids were acknowledged ACCEPTED."""

    def __init__(self, address: str, workers: int = 4, batch: int = 50, max_batches: int = 400):
        self.address = address
        self.batch = batch
        self.max_batches = max_batches
        self.acknowledged: list[str] = []
        self.sent: set[str] = set()
        self.refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(workers)]

    def __enter__(self) -> CommittedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _run(self, worker: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            for sequence in range(self.max_batches):
                ids = [f"w{worker}-{sequence}-{i}" for i in range(self.batch)]
                with self._lock:
                    self.sent.update(ids)
                while not self._stop.is_set():
                    request = pb.SendAdEventBatchRequest(
                        events=[valid_event(event_id=event_id) for event_id in ids],
                        ack_mode=pb.ACK_MODE_COMMITTED,
                    )
                    try:
                        response = api.SendAdEventBatch(request, timeout=20)
                    except grpc.RpcError as error:
                        with self._lock:
                            self.refusals[error.code().name] += 1
                        time.sleep(0.05)
                        continue
                    accepted = [
                        r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED
                    ]
                    with self._lock:
                        self.acknowledged.extend(accepted)
                    break
                if self._stop.is_set():
                    return
                time.sleep(0.01)


def wait_until_count(load: CommittedLoad, count: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while load.count() < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what} ({load.count()} < {count})")
        time.sleep(0.05)


def dead_lettered(directory: Path) -> list[str]:
    return [
        orjson.loads(line)["event"]["event_id"]
        for path in directory.rglob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


@pytest.mark.integration
def test_service_under_load_across_a_master_failover_stores_every_acknowledged_event_once(
    own_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    backend = Backend("redis-cluster", tmp_path, redis_cluster=own_cluster)
    server = ServerProcess(
        tmp_path / "service",
        {
            **backend.service_env(),
            "AEP_ACK_MODE": "committed",
            "AEP_DATABASE_CONNECT_TIMEOUT": "500ms",
            "AEP_DATABASE_OPERATION_TIMEOUT": "2s",
            "AEP_BATCH_FLUSH_INTERVAL": "20ms",
            "AEP_RETRY_MAX_ATTEMPTS": "1000",  # outlast the failover: this is about retry
            "AEP_RETRY_MAX_BACKOFF": "200ms",
        },
    ).start()
    try:
        with CommittedLoad(server.address) as load:
            wait_until_count(load, 2000, 30, "2000 events acknowledged before the kill")
            killed, replica = own_cluster.kill_master()
            before = load.count()
            promoted_after = own_cluster.wait_promoted(replica, timeout_s=20)
            after_promotion = load.count()
            wait_until_count(load, after_promotion + 2000, 60, "2000 more after the promotion")
        metrics = scrape(server.metrics_port)
        exit_code = server.stop()
    finally:
        server.stop()
    assert exit_code == 0, server.log()
    stored = backend.read_ids()  # XRANGE of every shard stream, through a cluster client
    repeated = [i for i, n in Counter(stored).items() if n > 1]
    missing = set(load.acknowledged) - set(stored)
    print(
        f"acknowledged={len(load.acknowledged)} stored={len(stored)} "
        f"repeated={len(repeated)} lost={len(missing)} killed={killed.address} "
        f"promoted_after={promoted_after:.2f}s acked_during_failover={after_promotion - before} "
        f"write_failures={metrics.total('processing_errors_total')} "
        f"processed={metrics.total('events_processed_total')} "
        f"duplicates={metrics.total('events_duplicate_total')} refusals={dict(load.refusals)}"
    )
    assert not repeated, f"stored more than once: {repeated[:5]}"
    assert not missing, f"{len(missing)} acknowledged events not stored: {sorted(missing)[:5]}"
    assert set(stored) <= load.sent
    assert metrics.total("processing_errors_total") > 0, "the kill never hit a write"
    assert dead_lettered(server.dead_letter_dir) == []
    assert not killed.alive and replica.info("replication").get("role") == "master"


def test_cluster_node_fixture_runs_cluster_mode(redis_cluster: RedisClusterServer) -> None:
    node: RedisClusterNode = redis_cluster.nodes[0]
    client: redis.Redis = node.admin()
    try:
        assert client.info("cluster")["cluster_enabled"] == 1
    finally:
        client.close()


async def test_with_min_replicas_acked_a_master_killed_right_after_a_write_loses_none_of_it(
    own_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    """database.redis.min_replicas_acked=1: a batch counts as written once the replica of
    every master that got a shard of it has that shard, so a master killed right after
    the write (no waiting for replication, unlike the test above) loses nothing. The
    promoted replica has no replica of its own: its shards' writes fail until one
    joins, as the setting says."""
    backend = Backend("redis-cluster", tmp_path, redis_cluster=own_cluster)
    store = open_cluster_store(backend, min_replicas_acked=1, replica_ack_timeout=0.3)
    await store.open()
    try:
        result = await store.write_batch(batch_of(events(0, 300)))
        _master, replica = own_cluster.kill_master()
        own_cluster.wait_promoted(replica, timeout_s=20)
        deadline = time.monotonic() + 20
        while True:  # until the client has the new slot map: then the replica count fails
            with pytest.raises(StoreError) as raised:
                await store.write_batch(batch_of(events(300, 100)))
            if "min_replicas_acked=1" in str(raised.value) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "0 of database.redis.min_replicas_acked=1 replicas" in str(raised.value)
    finally:
        await store.close()
    assert result.written == 300
    stored = Counter(backend.read_ids())
    assert [i for i in range(300) if stored[f"e{i}"] != 1] == []  # each once, none lost


async def test_with_min_replicas_acked_a_replica_that_confirms_nothing_fails_its_shards(
    own_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    backend = Backend("redis-cluster", tmp_path, redis_cluster=own_cluster)
    store = open_cluster_store(backend, min_replicas_acked=1, replica_ack_timeout=0.3)
    await store.open()
    master = own_cluster.live_masters()[0]
    replica = own_cluster.replica_of(master)
    try:
        replica.pause()  # connected, confirming nothing (shorter than the node timeout)
        try:
            with pytest.raises(
                StoreError, match=r"0 of database\.redis\.min_replicas_acked=1 replicas"
            ):
                await store.write_batch(batch_of(events(0, 100)))
        finally:
            replica.resume()
        # The pipeline's retry: every shard again, found by the dedupe keys where written.
        result = await store.write_batch(batch_of(events(0, 100)))
    finally:
        await store.close()
    assert result.written + result.duplicates == 100
    assert_stored_exactly_once(backend, {f"e{i}" for i in range(100)})
