"""Redis Stream store: one Lua script call (EVALSHA) per batch.

Stored form: one stream entry per event in `database.redis.stream` (default
`ad_events`), flat fields with the stored-form names (`event_id`, `user_id`,
`ad_id`, `event_type`, `timestamp`, `received_at`, ...); `attributes` is a JSON
string field. With `max_len` > 0 every XADD trims approximately
(`MAXLEN ~ max_len`).

Idempotency: the script appends an event only when its dedupe key
`{<stream>}:dedupe:<event_id>` does not exist, then sets that key with an
expiry of `dedupe_window`. A script runs atomically inside Redis, so retries,
replays and several replicas sharing the Redis never append an id twice within
the window; there is no read-then-write race in the client. After the window
the key expires and the same id would be appended again. The `{<stream>}`
hash tag puts the dedupe keys in the stream's cluster slot.

Redis Cluster (`cluster: true`): the stream is split into `shards` streams.
Shard i's stream is `<stream>:{<i>:<n>}`; its hash tag `<i>:<n>` (n the
smallest number that puts the tag's slot in the i-th of `shards` equal ranges
of the 16384 slots) spreads the shards evenly over the slot space, so over the
masters of any cluster whose masters hold even slot ranges. Its dedupe keys
(`<shard stream>:dedupe:<event_id>`) and counter hashes share its slot, so one
script call per shard per batch keeps dedupe atomic per event. An event goes
to shard `crc32(utf-8 event_id) mod shards`: every retry or replay of an id
meets its dedupe key. The list `<stream>:shards` names the shard streams in
order, for consumers. A batch whose shard calls fail in part raises; the
shards that succeeded are remembered (bounded), so the pipeline's retry of the
same batch counts their events as written, not as duplicates.

Durability: a batch counts as written once Redis applied it in memory. Whether
it survives a Redis crash is Redis' own setting: `appendonly yes` keeps it
across a killed process (`appendfsync everysec` can lose up to a second on a
machine crash; `always` loses nothing). Whether it survives a failover to a
replica: with `min_replicas_acked` N > 0 it counts as written only once N
replicas confirmed it (WAIT after the script, on its connection; in cluster
mode on a connection to each shard's master); else the write fails and is
retried (docs/stores.md, Replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisClusterException, RedisError

from aep.events.block import EventBatch
from aep.events.schema import STORED_FIELDS, FieldKind
from aep.settings import DatabaseSettings, RedisStoreSettings
from aep.storage.base import StoreError, WriteResult, redact_credentials

# KEYS: [stream, dedupe key per event..., counter hash per distinct minute...]
# ARGV: [dedupe window s, max_len (0: no trim), counters ttl s, a JSON array of
#        one array per event: [counter key index in KEYS (0: none), counter
#        field, field, value, field, value, ...]]
# One JSON argument for the batch instead of ~30 per event keeps the client's
# command packing (pure Python in redis.asyncio) from dominating the cost of a
# batch; one instead of one per event also spares a bytes object per event
# (orjson leaves ~8 KB allocated behind each small result: with Redis slow, the
# writers' batches held 8 KB per event in flight).
# Redis keeps the effects of a script that fails halfway. So the entry is
# appended before its dedupe key is set: a failure between the two makes a
# retry append the event again (a duplicate), never skip it (a loss).
APPEND_SCRIPT = """
local window = ARGV[1]
local max_len = tonumber(ARGV[2])
local counters_ttl = ARGV[3]
local stream = KEYS[1]
local written = 0
local counted = {}
local rows = cjson.decode(ARGV[4])
for i = 1, #rows do
  local dedupe_key = KEYS[i + 1]
  if redis.call('EXISTS', dedupe_key) == 0 then
    local row = rows[i]
    if max_len > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', max_len, '*', unpack(row, 3))
    else
      redis.call('XADD', stream, '*', unpack(row, 3))
    end
    redis.call('SET', dedupe_key, '1', 'EX', window)
    written = written + 1
    local counter_key = row[1]
    if counter_key > 0 then
      redis.call('HINCRBY', KEYS[counter_key], row[2], 1)
      counted[counter_key] = true
    end
  end
end
for key_index in pairs(counted) do
  redis.call('EXPIRE', KEYS[key_index], counters_ttl)
end
return written
"""


class ReplicasBehindError(RedisError):
    """Fewer replicas than database.redis.min_replicas_acked confirmed a write."""


# Writes the shard list of a clustered stream in one step, so a consumer never
# reads it half written while replicas open concurrently.
SHARD_LIST_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV))
return #ARGV
"""
# Batches whose shard calls failed in part, remembered for the retry.
_PARTIAL_BATCHES_KEPT = 256
# Connections per cluster node, and commands in flight at once: the cluster
# client fails a command that finds its node's pool used up (it does not wait),
# so the store makes commands wait for one of its slots instead.
_CLUSTER_CONNECTIONS = 64
_CLUSTER_ERRORS = (RedisError, RedisClusterException, OSError)


def dedupe_key(stream: str, event_id: str) -> str:
    return f"{{{stream}}}:dedupe:{event_id}"


def counter_key(stream: str, minute: str) -> str:
    """The hash of per-minute counts; fields `<ad_id>|<event_type>`."""
    return f"{{{stream}}}:counts:{minute}"


@functools.lru_cache(maxsize=8)
def shard_tags(shards: int) -> tuple[str, ...]:
    """Each shard's hash tag `<i>:<n>`: the first n whose slot lies in the i-th of
    `shards` equal slot ranges, so the shards spread evenly over the slot space."""
    tags = []
    for shard in range(shards):
        low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        n = 0
        while not low <= key_slot(f"{shard}:{n}".encode()) < high:
            n += 1
        tags.append(f"{shard}:{n}")
    return tuple(tags)


def shard_streams(stream: str, shards: int) -> list[str]:
    """The shard streams of a clustered stream, in shard order."""
    return [f"{stream}:{{{tag}}}" for tag in shard_tags(shards)]


def shard_list_key(stream: str) -> str:
    """The list naming the shard streams, for consumers."""
    return f"{stream}:shards"


def shard_of(event_id: str, shards: int) -> int:
    """The shard of an event: stable across processes and restarts (not hash())."""
    return zlib.crc32(event_id.encode()) % shards


def shard_dedupe_key(shard_stream: str, event_id: str) -> str:
    return f"{shard_stream}:dedupe:{event_id}"


def shard_counter_key(shard_stream: str, minute: str) -> str:
    return f"{shard_stream}:counts:{minute}"


def cluster_client(url: str, *, connect_timeout: float, operation_timeout: float) -> RedisCluster:
    """A cluster client of one or more comma-separated startup node URLs; the first
    one's credentials and options apply to every node."""
    first, *others = (part.strip() for part in url.split(",") if part.strip())
    startup_nodes = []
    for other in others:
        parts = urlsplit(other)
        startup_nodes.append(ClusterNode(parts.hostname or "localhost", parts.port or 6379))
    return RedisCluster.from_url(
        first,
        startup_nodes=startup_nodes or None,
        socket_connect_timeout=connect_timeout,
        socket_timeout=operation_timeout,
        # Each retry first re-reads the cluster's slot map (after a connection
        # error) or follows MOVED/ASK; a failover outlasting two is the
        # pipeline's retry policy. Safe because the script is idempotent.
        retry=Retry(NoBackoff(), 2),
        client_name="ad-event-processor",
        max_connections=_CLUSTER_CONNECTIONS,
    )


def _field_text(value: Any) -> str:
    """Stream field values are strings; structured ones (attributes) as JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# How each kind of stored field becomes stream field text. Numbers as decimal
# text: Lua would read JSON numbers as doubles and round large int64 values.
_TEXT_OF_KIND: dict[FieldKind, Callable[[Any], str]] = {
    FieldKind.ID: str,
    FieldKind.TEXT: str,
    FieldKind.EVENT_TYPE: str,
    FieldKind.TIMESTAMP: str,
    FieldKind.INT64: str,
    FieldKind.STRING_MAP: _json_text,
}
# Keys outside the schema (never from this service) go by their value's type.
_FIELD_TEXT: dict[str, Callable[[Any], str]] = {
    field.name: _TEXT_OF_KIND[field.kind] for field in STORED_FIELDS
}


class RedisStore:
    """EventStore appending to a Redis Stream; see the module docstring."""

    def __init__(
        self, settings: RedisStoreSettings, *, connect_timeout: float, operation_timeout: float
    ) -> None:
        self._settings = settings
        self._stream = settings.stream
        self._connect_timeout = connect_timeout
        self._operation_timeout = operation_timeout
        self._client: aioredis.Redis | RedisCluster | None = None
        self._append: AsyncScript | None = None
        self._window = max(1, round(settings.dedupe_window))
        self._counters_ttl = max(1, round(settings.counters_ttl))
        self._cluster = settings.cluster
        self._shard_streams = shard_streams(self._stream, settings.shards) if self._cluster else []
        # Shard streams keep about max_len entries together.
        self._max_len = (
            -(-settings.max_len // settings.shards) if self._cluster else settings.max_len
        )
        self._in_flight = asyncio.Semaphore(_CLUSTER_CONNECTIONS)
        # Event ids of a batch whose shards failed in part -> {shard: events it wrote}.
        self._partial: OrderedDict[tuple[str, ...], dict[int, int]] = OrderedDict()
        # Cluster mode with min_replicas_acked: a client of each master, by name,
        # so that a shard's script and its WAIT run on one connection.
        self._master_clients: dict[str, aioredis.Redis] = {}

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, worker_count: int) -> RedisStore:
        return cls(
            settings.redis,
            connect_timeout=settings.connect_timeout,
            operation_timeout=settings.operation_timeout,
        )

    @property
    def name(self) -> str:
        return "redis"

    @property
    def shard_streams(self) -> list[str]:
        """The shard streams in cluster mode (empty otherwise)."""
        return list(self._shard_streams)

    async def open(self) -> None:
        if self._client is None:
            if self._cluster:
                self._client = cluster_client(
                    self._settings.url,
                    connect_timeout=self._connect_timeout,
                    operation_timeout=self._operation_timeout,
                )
            else:
                self._client = aioredis.Redis.from_url(
                    self._settings.url,
                    socket_connect_timeout=self._connect_timeout,
                    socket_timeout=self._operation_timeout,
                    # One immediate retry on a fresh connection replaces pooled
                    # connections that died with a Redis restart; longer outages are
                    # the pipeline's retry policy. Safe because the script is idempotent.
                    retry=Retry(NoBackoff(), 1),
                    client_name="ad-event-processor",
                )
            # EVALSHA; after a Redis restart emptied the script cache, the
            # NOSCRIPT answer makes it load the script once and call again.
            self._append = self._client.register_script(APPEND_SCRIPT)
        try:
            if self._cluster:
                await self._publish_shards()
            await self.ping()
        except StoreError:
            await self.close()
            raise

    async def _publish_shards(self) -> None:
        client = self._client
        assert client is not None
        async with self._answering_within_connect_timeout():
            await client.eval(
                SHARD_LIST_SCRIPT, 1, shard_list_key(self._stream), *self._shard_streams
            )

    @contextlib.asynccontextmanager
    async def _answering_within_connect_timeout(self) -> AsyncIterator[None]:
        """A short call (ping, shard list) answers within connect_timeout; else StoreError."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                yield
        except TimeoutError as error:
            raise StoreError(
                f"redis store at {redact_credentials(self._settings.url)}: "
                f"no answer within {self._connect_timeout}s"
            ) from error
        except _CLUSTER_ERRORS as error:
            raise StoreError(
                f"redis store at {redact_credentials(self._settings.url)}: {error}"
            ) from error

    def _script_input(
        self,
        stream: str,
        key_prefix: str,
        records: Sequence[dict[str, Any]],
    ) -> tuple[list[str], list[str | bytes | int]]:
        """KEYS and ARGV of one append call to `stream`; dedupe keys and counter
        hashes are named `<key_prefix>:dedupe:<id>` and `<key_prefix>:counts:<minute>`."""
        keys: list[str] = [stream]
        keys.extend(f"{key_prefix}:dedupe:{record['event_id']}" for record in records)
        minute_index: dict[str, int] = {}
        rows: list[list[str | int]] = []
        counting = self._settings.counters
        field_text = _FIELD_TEXT
        for record in records:
            row: list[str | int] = [0, ""]
            if counting:
                # Event time, to the minute: "2026-11-26T19:05" of an RFC 3339 timestamp.
                minute = str(record.get("timestamp", ""))[:16]
                index = minute_index.get(minute)
                if index is None:
                    keys.append(f"{key_prefix}:counts:{minute}")
                    index = minute_index[minute] = len(keys)
                row[0] = index
                row[1] = f"{record.get('ad_id', '')}|{record.get('event_type', '')}"
            for field, value in record.items():
                row.append(field)
                row.append(field_text.get(field, _field_text)(value))
            rows.append(row)
        return keys, [self._window, self._max_len, self._counters_ttl, orjson.dumps(rows)]

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        append = self._append
        if append is None:
            raise StoreError("redis store: not open")
        if not batch.count:
            return WriteResult(written=0, duplicates=0)
        if self._cluster:
            return await self._write_shards(append, batch)
        records = batch.records()
        stream = self._stream
        keys, args = self._script_input(stream, f"{{{stream}}}", records)
        count = len(records)
        # Not held while the script runs: with Redis slow or paused, every writer
        # would keep its batch's records (dicts, ~1 KB an event) besides the args.
        del records
        try:
            if self._settings.min_replicas_acked:
                client = self._client
                assert isinstance(client, aioredis.Redis)
                alive_key = f"{{{stream}}}:alive"
                written = await self._append_then_wait(client, append, keys, args, alive_key)
            else:
                written = int(await append(keys=keys, args=args))
        except (RedisError, OSError) as error:
            raise StoreError(f"redis store: append to {stream!r}: {error}") from error
        return WriteResult(written=written, duplicates=count - written)

    async def _append_then_wait(
        self,
        client: aioredis.Redis,
        append: AsyncScript,
        keys: list[str],
        args: list[Any],
        alive_key: str,
    ) -> int:
        """The script, then WAIT on the same connection (WAIT covers that
        connection's writes). A batch whose events were all there already (an
        earlier attempt wrote them, then its WAIT timed out) writes nothing, so
        it first refreshes the stream's alive key (the ping's, in the stream's
        slot): a replicated write, for WAIT to cover the earlier writes too.
        ReplicasBehindError if fewer replicas confirmed than wanted."""
        settings = self._settings
        wanted = settings.min_replicas_acked
        timeout_ms = max(1, int(settings.replica_ack_timeout * 1000))
        async with client.client() as connection:
            written = int(await append(keys=keys, args=args, client=connection))
            if not written:
                await connection.set(alive_key, str(time.time()), ex=60)
            confirmed = int(await connection.wait(wanted, timeout_ms))
        if confirmed < wanted:
            raise ReplicasBehindError(
                f"{confirmed} of database.redis.min_replicas_acked={wanted} replicas "
                f"confirmed the batch within {settings.replica_ack_timeout:g}s; it is on "
                "the primary, and the retry finds it there by its dedupe keys"
            )
        return written

    def _master_client(self, node: ClusterNode) -> aioredis.Redis:
        """A client of one master, with the options of the first URL."""
        client = self._master_clients.get(node.name)
        if client is None:
            parts = urlsplit(self._settings.url.split(",")[0].strip())
            credentials = parts.netloc.rpartition("@")[0]
            host = f"[{node.host}]" if ":" in node.host else node.host
            netloc = f"{credentials}@{host}:{node.port}" if credentials else f"{host}:{node.port}"
            url = urlunsplit(parts._replace(netloc=netloc))
            client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._operation_timeout,
                client_name="ad-event-processor",
            )
            self._master_clients[node.name] = client
        return client

    async def _append_shard(
        self, append: AsyncScript, shard: int, records: list[dict[str, Any]]
    ) -> int:
        stream = self._shard_streams[shard]
        keys, args = self._script_input(stream, stream, records)
        del records  # not held while the script runs (see write_batch)
        async with self._in_flight:
            if not self._settings.min_replicas_acked:
                return int(await append(keys=keys, args=args))
            cluster = self._client
            assert isinstance(cluster, RedisCluster)
            try:
                node = cluster.get_node_from_key(stream)
                if node is None:
                    raise RedisClusterException(f"no master known for {stream!r}")
                master = self._master_client(node)
                return await self._append_then_wait(master, append, keys, args, f"{stream}:alive")
            except _CLUSTER_ERRORS:
                # The slot moved or its master is gone: a keyed call through the
                # cluster client makes it re-read the slot map for the retry.
                with contextlib.suppress(*_CLUSTER_ERRORS):
                    await cluster.exists(stream)
                raise

    async def _write_shards(self, append: AsyncScript, batch: EventBatch) -> WriteResult:
        """One script call per shard of the batch, concurrently. Any failure fails the
        batch; the pipeline retries all of it, and every shard runs again (what a
        failover lost is appended again; what is there is found by its dedupe keys)."""
        records = batch.records()
        shards = self._settings.shards
        parts: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            parts.setdefault(shard_of(str(record["event_id"]), shards), []).append(record)
        count = len(records)
        shard_order = list(parts)
        calls = [self._append_shard(append, shard, part) for shard, part in parts.items()]
        del records, parts  # each call drops its part once its script input is built
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        # Only a batch retried after a partial failure has an entry; the key is
        # built only while some batch has one.
        batch_key = tuple(batch.event_ids) if self._partial else ()
        earlier = self._partial.pop(batch_key, {}) if self._partial else {}
        written = 0
        failures: list[tuple[int, BaseException]] = []
        done: dict[int, int] = dict(earlier)
        for shard, outcome in zip(shard_order, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, _CLUSTER_ERRORS):
                    raise outcome
                failures.append((shard, outcome))
                continue
            # A shard an earlier attempt wrote: its events count as written by
            # that attempt, not as duplicates of it.
            done.setdefault(shard, outcome)
            written += done[shard]
        if failures:
            if not batch_key:
                batch_key = tuple(batch.event_ids)
            self._partial[batch_key] = done
            while len(self._partial) > _PARTIAL_BATCHES_KEPT:
                self._partial.popitem(last=False)
            shard, error = failures[0]
            raise StoreError(
                f"redis store: {len(failures)} of {len(shard_order)} shard appends failed, "
                f"e.g. {self._shard_streams[shard]!r}: {error}"
            ) from error
        return WriteResult(written=written, duplicates=count - written)

    async def ping(self) -> None:
        client = self._client
        if client is None:
            raise StoreError("redis store: not open")
        # A ping answers within connect_timeout or the store counts as down
        # (socket_timeout is the longer operation_timeout, meant for writes).
        async with self._answering_within_connect_timeout():
            if isinstance(client, RedisCluster):
                await self._ping_cluster(client)
            else:
                # A write, not PING: a Redis that answers but refuses writes (out
                # of memory, read-only replica, failed snapshot) must count as down.
                await client.set(f"{{{self._stream}}}:alive", str(time.time()), ex=60)

    async def _ping_cluster(self, client: RedisCluster) -> None:
        """A write on every master that holds a shard (one shard stream's slot each):
        any master down, refusing writes or the cluster failed fails the ping."""
        probes: dict[str, str] = {}
        for stream in self._shard_streams:
            try:
                node = client.get_node_from_key(stream)
            except RedisClusterException:  # no slot map yet (or lost): probe every shard
                node = None
            probes.setdefault(node.name if node is not None else stream, stream)
        stamp = str(time.time())
        await asyncio.gather(*(self._probe(client, s, stamp) for s in probes.values()))

    async def _probe(self, client: RedisCluster, stream: str, stamp: str) -> None:
        async with self._in_flight:
            await client.set(f"{stream}:alive", stamp, ex=60)

    async def close(self) -> None:
        masters, self._master_clients = list(self._master_clients.values()), {}
        await asyncio.gather(*(master.aclose() for master in masters), return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            self._append = None
            await client.aclose()
            if isinstance(client, RedisCluster):
                # redis-py's aclose() does nothing while the client waits to
                # re-read the slot map (after a connection error): close every
                # node's connections here, or their sockets outlive the store.
                nodes = {id(node): node for node in client.get_nodes()}
                nodes.update(
                    (id(node), node) for node in client.nodes_manager.startup_nodes.values()
                )
                await asyncio.gather(
                    *(node.disconnect() for node in nodes.values()), return_exceptions=True
                )
