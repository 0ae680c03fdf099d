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

Durability: a batch counts as written once Redis applied it in memory. Whether
it survives a Redis crash is Redis' own setting: `appendonly yes` keeps it
across a killed process (`appendfsync everysec` can lose up to a second on a
machine crash; `always` loses nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from aep.events.block import EventBatch
from aep.events.schema import STORED_FIELDS, FieldKind
from aep.settings import DatabaseSettings, RedisStoreSettings
from aep.storage.base import StoreError, WriteResult, redact_credentials

# KEYS: [stream, dedupe key per event..., counter hash per distinct minute...]
# ARGV: [dedupe window s, max_len (0: no trim), counters ttl s, then one JSON
#        array per event: [counter key index in KEYS (0: none), counter field,
#        field, value, field, value, ...]]
# One JSON argument per event instead of ~30 keeps the client's command
# packing (pure Python in redis.asyncio) from dominating the cost of a batch.
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
for i = 4, #ARGV do
  local dedupe_key = KEYS[i - 2]
  if redis.call('EXISTS', dedupe_key) == 0 then
    local row = cjson.decode(ARGV[i])
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


def dedupe_key(stream: str, event_id: str) -> str:
    return f"{{{stream}}}:dedupe:{event_id}"


def counter_key(stream: str, minute: str) -> str:
    """The hash of per-minute counts; fields `<ad_id>|<event_type>`."""
    return f"{{{stream}}}:counts:{minute}"


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
        self._client: aioredis.Redis | None = None
        self._append: AsyncScript | None = None
        self._window = max(1, round(settings.dedupe_window))
        self._counters_ttl = max(1, round(settings.counters_ttl))

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

    async def open(self) -> None:
        if self._client is None:
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
            await self.ping()
        except StoreError:
            await self.close()
            raise

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        append = self._append
        if append is None:
            raise StoreError("redis store: not open")
        if not batch.count:
            return WriteResult(written=0, duplicates=0)
        records = batch.records()
        stream = self._stream
        keys: list[str] = [stream]
        keys.extend(dedupe_key(stream, record["event_id"]) for record in records)
        minute_index: dict[str, int] = {}
        args: list[str | bytes | int] = [self._window, self._settings.max_len, self._counters_ttl]
        counting = self._settings.counters
        field_text = _FIELD_TEXT
        for record in records:
            row: list[str | int] = [0, ""]
            if counting:
                # Event time, to the minute: "2026-11-26T19:05" of an RFC 3339 timestamp.
                minute = str(record.get("timestamp", ""))[:16]
                index = minute_index.get(minute)
                if index is None:
                    keys.append(counter_key(stream, minute))
                    index = minute_index[minute] = len(keys)
                row[0] = index
                row[1] = f"{record.get('ad_id', '')}|{record.get('event_type', '')}"
            for field, value in record.items():
                row.append(field)
                row.append(field_text.get(field, _field_text)(value))
            args.append(orjson.dumps(row))
        try:
            written = int(await append(keys=keys, args=args))
        except (RedisError, OSError) as error:
            raise StoreError(f"redis store: append to {stream!r}: {error}") from error
        return WriteResult(written=written, duplicates=len(records) - written)

    async def ping(self) -> None:
        client = self._client
        if client is None:
            raise StoreError("redis store: not open")
        try:
            # A ping answers within connect_timeout or the store counts as down
            # (socket_timeout is the longer operation_timeout, meant for writes).
            async with asyncio.timeout(self._connect_timeout):
                # A write, not PING: a Redis that answers but refuses writes (out
                # of memory, read-only replica, failed snapshot) must count as down.
                await client.set(f"{{{self._stream}}}:alive", str(time.time()), ex=60)
        except TimeoutError as error:
            raise StoreError(
                f"redis store at {redact_credentials(self._settings.url)}: "
                f"no answer within {self._connect_timeout}s"
            ) from error
        except (RedisError, OSError) as error:
            raise StoreError(
                f"redis store at {redact_credentials(self._settings.url)}: {error}"
            ) from error

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._append = None
            await client.aclose()
