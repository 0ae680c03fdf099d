"""Configuration: defaults, overridden by a YAML file, overridden by `AEP_` env vars.

Every key has one env var: the key path upper-cased and joined with single
underscores, behind `AEP_` (`batch.flush_interval` -> `AEP_BATCH_FLUSH_INTERVAL`,
`database.file.dir` -> `AEP_DATABASE_FILE_DIR`). Env vars that name no key are
ignored, because Kubernetes injects `<SERVICE>_PORT`-style variables for every
Service in the namespace and a Service called "aep" must not break the pod.

Durations and sizes are written as DURATION_FORMS and SIZE_FORMS say; the
README and `--help` quote those two texts, so the three agree.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

ENV_PREFIX = "AEP_"
CONFIG_PATH_ENV = "AEP_CONFIG"

DURATION_FORMS = "Durations: 500us, 200ms, 5s, 1m, 1h; a bare number is seconds (5 = 5s)."
SIZE_FORMS = (
    "Sizes: bytes (65536) or a whole number with a unit: 64KB, 64MB, 1GB are powers"
    " of 1000; 64KiB, 64MiB, 1GiB are powers of 1024 (units in any case)."
)
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any) -> float:
    """`"200ms"` -> 0.2 seconds. Numbers are taken as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 200ms, 5s or 1m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_PATTERN.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration. {DURATION_FORMS}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration, for --print-config."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / factor
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{round(seconds * 1e6)}us"


def parse_size(value: Any) -> int:
    """`"4MiB"` -> 4194304 bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size. {SIZE_FORMS}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_PATTERN.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size. {SIZE_FORMS}")
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_size(size: int) -> str:
    """Inverse of parse_size, for --print-config: the largest unit that is exact."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class CodecChoice(StrEnum):
    AUTO = "auto"  # native when it is built, else python (with a warning)
    NATIVE = "native"  # the C pass; refuse to start without it
    PYTHON = "python"  # the reference implementation


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    max_message_bytes: ByteSize = Field(4 * 1024**2, ge=1024)
    max_batch_events: int = Field(1000, ge=1)
    # AdEventService calls in progress at once (0: no limit); past it a call gets
    # RESOURCE_EXHAUSTED at once. Health checks and reflection are not counted.
    max_concurrent_rpcs: int = Field(1000, ge=0)
    # A unary call whose request has not arrived whole after this long ends with
    # DEADLINE_EXCEEDED, and a stream that sends no chunk for stream_idle_timeout
    # too: a client that stops sending cannot hold its call forever. 0: no limit.
    request_read_timeout: Duration = 30.0
    stream_idle_timeout: Duration = 60.0
    keepalive_time: Duration = 30.0
    keepalive_timeout: Duration = 10.0
    # Bounded connection age makes clients reconnect, so new replicas behind a
    # Kubernetes Service (an L4 load balancer) get their share of traffic.
    max_connection_age: Duration = 300.0
    max_connection_age_grace: Duration = 30.0
    # HTTP/2 receive window of each call: what a client may send ahead of what
    # the server has read. Fixed (gRPC's BDP probing, which grows it to several
    # MB per call, is off), so a stream whose client never reads its acks holds
    # at most this much unread data (besides its unacknowledged chunks). It
    # bounds the calls of one connection together too: at 64 KiB, four callers
    # sending batches of 1,000 events waited for window updates, costing about
    # a tenth more server CPU per event than at 128 KiB (docs/performance.md).
    receive_window: ByteSize = Field(128 * 1024, ge=16 * 1024, le=2**31 - 1)
    # StreamAdEvents flow control: chunks read but not yet acknowledged, per
    # stream; past it the server stops reading and HTTP/2 holds the client.
    stream_max_unacked_chunks: int = Field(64, ge=1)
    # How long a stream waits for queue room before ending with RESOURCE_EXHAUSTED.
    stream_backpressure_wait: Duration = 5.0
    # Which implementation reads requests (aep.events.codec).
    codec: CodecChoice = CodecChoice.AUTO


class FsyncPolicy(StrEnum):
    BATCH = "batch"  # fsync after every batch, before the batch counts as written
    INTERVAL = "interval"  # at most every fsync_interval
    NEVER = "never"  # left to the OS (and close)


class FileFormat(StrEnum):
    JSONL = "jsonl"  # events-*.jsonl, one JSON object per line
    PROTOBUF = "protobuf"  # events-*.binpb, varint-length-prefixed StoredAdEvent records


class FileStoreSettings(_Section):
    dir: Path = Path("data/events")
    format: FileFormat = FileFormat.JSONL
    rotate_bytes: ByteSize = Field(128 * 1024**2, ge=1024)
    rotate_interval: Duration = 3600.0
    fsync: FsyncPolicy = FsyncPolicy.BATCH
    fsync_interval: Duration = 1.0
    dedupe_window: Duration = 600.0
    # Bounds the memory the remembered ids take (per id: docs/stores.md).
    dedupe_max_ids: int = Field(500_000, ge=0)


class RedisStoreSettings(_Section):
    url: str = "redis://localhost:6379/0"
    stream: str = Field("ad_events", min_length=1)
    # XADD MAXLEN ~ max_len: approximate trimming, cheap; 0 keeps every entry.
    max_len: int = Field(0, ge=0)
    # An event_id seen within this window is not appended again. Each id holds
    # one key for the window: Redis memory grows with events/s x window.
    dedupe_window: Duration = Field(600.0, ge=1)
    # Per-minute counts by ad and event type, in hashes `{<stream>}:counts:<minute>`.
    counters: bool = False
    counters_ttl: Duration = Field(86400.0, ge=1)
    # Redis Cluster: `url` is then one or more comma-separated startup nodes
    # (credentials and options from the first), and the stream is split into
    # `shards` streams `<stream>:{<shard>:<n>}`, each with its dedupe keys and
    # counters in its own slot, an event placed by a hash of its event_id.
    cluster: bool = False
    # More shards spread the load over more masters; changing the number moves
    # ids to other shards, so dedupe does not hold across the change.
    shards: int = Field(16, ge=1, le=1024)
    # A batch counts as written only once this many replicas confirmed it
    # (Redis WAIT, within replica_ack_timeout; in cluster mode, of each master
    # that got a shard of it); else the write fails and is retried. 0: once the
    # primary has it (a failover can lose what its replicas had not received).
    min_replicas_acked: int = Field(0, ge=0)
    replica_ack_timeout: Duration = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check_nodes(self) -> RedisStoreSettings:
        if "," in self.url and not self.cluster:
            raise ValueError("url lists several nodes: that needs cluster: true")
        if self.cluster and ("{" in self.stream or "}" in self.stream):
            # Its own braces would be the hash tag of every shard: one slot for all.
            raise ValueError("stream: no { or } in cluster mode (the shards' hash tags)")
        return self


class MongoStoreSettings(_Section):
    uri: str = "mongodb://localhost:27017"
    database: str = Field("ad_events", min_length=1)
    collection: str = Field("events", min_length=1)
    # TTL index on received_at; 0 keeps documents forever (and dedupes forever).
    ttl: Duration = 0.0


class KafkaCompression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    SNAPPY = "snappy"
    LZ4 = "lz4"
    ZSTD = "zstd"


class KafkaSecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


# Kafka's own rule for topic names (kafka.common.internals.Topic).
_KAFKA_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:,\[\]]+):(\d{1,5})$")


class KafkaStoreSettings(_Section):
    # Comma-separated host:port; one reachable broker is enough to find the rest.
    bootstrap_servers: str = "localhost:9092"
    topic: str = "ad_events"
    compression: KafkaCompression = KafkaCompression.LZ4
    security_protocol: KafkaSecurityProtocol = KafkaSecurityProtocol.PLAINTEXT
    # With SASL_PLAINTEXT / SASL_SSL: the mechanism, user and password.
    sasl_mechanism: KafkaSaslMechanism = KafkaSaslMechanism.PLAIN
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # With SSL / SASL_SSL: the CA bundle that signed the brokers' certificates
    # (unset: the system's), and a client certificate and key for mTLS.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = Field("ad-event-processor", min_length=1)
    # How long the producer waits for more records before it sends a request.
    linger: Duration = Field(0.005, le=900.0)

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]
        for server in servers:
            match = _HOST_PORT.match(server)
            if match is None or not 1 <= int(match.group(2)) <= 65535:
                raise ValueError(
                    f"{server!r} is not host:port; give a comma-separated list such as "
                    "kafka-0:9092,kafka-1:9092"
                )
        return ",".join(servers)

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not _KAFKA_TOPIC.match(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> KafkaStoreSettings:
        sasl = self.security_protocol in (
            KafkaSecurityProtocol.SASL_PLAINTEXT,
            KafkaSecurityProtocol.SASL_SSL,
        )
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol.value} needs sasl_username "
                "and sasl_password"
            )
        if not sasl and (self.sasl_username or self.sasl_password is not None):
            raise ValueError(
                "sasl_username / sasl_password are set but security_protocol is "
                f"{self.security_protocol.value}; use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls = self.security_protocol in (
            KafkaSecurityProtocol.SSL,
            KafkaSecurityProtocol.SASL_SSL,
        )
        given = [
            name
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
            if getattr(self, name) is not None
        ]
        if given and not tls:
            raise ValueError(
                f"{', '.join(given)} set but security_protocol is "
                f"{self.security_protocol.value}; use SSL or SASL_SSL"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate)")
        return self


class StoreType(StrEnum):
    FILE = "file"
    REDIS = "redis"
    MONGODB = "mongodb"
    KAFKA = "kafka"


def parse_store_types(value: Any) -> Any:
    """`"mongodb,redis"`, a YAML list or one name -> the StoreTypes, in the order given."""
    if isinstance(value, StoreType):
        return (value,)
    if isinstance(value, str):
        names: list[Any] = [name.strip() for name in value.split(",")]
    elif isinstance(value, list | tuple):
        names = list(value)
    else:
        raise ValueError(f"{value!r}: give a store type, a comma-separated list or a YAML list")
    known = ", ".join(repr(store_type.value) for store_type in StoreType)
    types = []
    for name in names:
        try:
            types.append(StoreType(name))
        except ValueError:
            if name == "":
                raise ValueError(f"{value!r}: an empty name in the list; known: {known}") from None
            raise ValueError(f"{name!r} is not a store type; known: {known}") from None
    return tuple(types)


def _check_store_types(types: tuple[StoreType, ...]) -> tuple[StoreType, ...]:
    if not types:
        raise ValueError("name at least one store type")
    seen: set[StoreType] = set()
    for store_type in types:
        if store_type in seen:
            raise ValueError(f"{store_type.value!r} is listed twice")
        seen.add(store_type)
    return types


def _format_store_types(types: tuple[StoreType, ...]) -> str | list[str]:
    """One store renders as a plain string, as it was written before lists."""
    return types[0].value if len(types) == 1 else [store_type.value for store_type in types]


StoreTypes = Annotated[
    tuple[StoreType, ...],
    BeforeValidator(parse_store_types),
    AfterValidator(_check_store_types),
    PlainSerializer(_format_store_types),
]


class StartupPolicy(StrEnum):
    FAIL_FAST = "fail_fast"  # exit with code 3 when the store cannot be reached at start
    WAIT = "wait"  # listen NOT_SERVING and keep trying until the store answers


class DatabaseSettings(_Section):
    # One store, or several (`mongodb,redis`; YAML: a string or a list): every
    # listed store receives every event, each through its own lane.
    type: StoreTypes = (StoreType.FILE,)
    startup: StartupPolicy = StartupPolicy.FAIL_FAST
    # Bounds connecting and the start-up ping of a network store (Redis, MongoDB, Kafka).
    connect_timeout: Duration = Field(5.0, gt=0)
    # Bounds one call to a network store (a batch write, a ping); a call that
    # takes longer fails and the pipeline retries it (writes are idempotent;
    # Kafka's are at least once: a retry may append a record again).
    operation_timeout: Duration = Field(10.0, gt=0)
    file: FileStoreSettings = FileStoreSettings()
    redis: RedisStoreSettings = RedisStoreSettings()
    mongodb: MongoStoreSettings = MongoStoreSettings()
    kafka: KafkaStoreSettings = KafkaStoreSettings()


class BatchSettings(_Section):
    size: int = Field(2000, ge=1)
    flush_interval: Duration = Field(0.2, gt=0)
    worker_pool_size: int = Field(4, ge=1, le=256)


class QueueSettings(_Section):
    # Admission bounds: accepted events not yet written count against both.
    # A queued event takes about twice its stored form's size in RSS (its JSON
    # line plus its id and offsets; ~670 bytes measured by bench_queue_memory.py):
    # max_events is the bound that matters for memory.
    max_events: int = Field(100_000, ge=1)
    max_bytes: ByteSize = Field(64 * 1024**2, ge=1024)


class RetrySettings(_Section):
    max_attempts: int = Field(5, ge=1)
    initial_backoff: Duration = 0.1
    max_backoff: Duration = 5.0


class DeadLetterSettings(_Section):
    # Batches that still fail after retry.max_attempts are appended here as
    # JSON Lines ({"reason", "failed_at", "attempts", "event"}). With several
    # stores each has its own folder below: `<dir>/<store type>/`.
    dir: Path = Path("data/dead-letter")


class SpillPolicy(StrEnum):
    AUTO = "auto"  # spill when several stores are listed (one store: refuse, as before)
    ALWAYS = "always"
    NEVER = "never"


class SpillSettings(_Section):
    # When a store's lane is full (queue.max_events / queue.max_bytes), its new
    # events go to that store's spill, `<dir>/<store type>/`: segments in the
    # write-ahead log's record format, replayed into the store in order once it
    # takes writes again. Only when the spill holds max_bytes too is new work
    # refused (RESOURCE_EXHAUSTED).
    policy: SpillPolicy = SpillPolicy.AUTO
    dir: Path = Path("data/spill")
    max_bytes: ByteSize = Field(1024**3, ge=4096)
    segment_bytes: ByteSize = Field(16 * 1024**2, ge=4096)


MAX_EVENT_AGE_S = 10 * 365 * 24 * 3600.0


class ValidationSettings(_Section):
    max_id_length: int = Field(128, ge=1)
    max_attributes: int = Field(32, ge=0)
    max_attribute_key_length: int = Field(64, ge=1)
    max_attribute_value_length: int = Field(512, ge=1)
    # Skew window for AdEvent.timestamp, relative to the server's clock. At
    # most 10 years: the hot path tells a missing timestamp (the epoch) by its age.
    max_event_age: Duration = Field(7 * 24 * 3600.0, gt=0, le=MAX_EVENT_AGE_S)
    max_clock_skew: Duration = 300.0


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LoggingSettings(_Section):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.JSON


class HealthSettings(_Section):
    # gRPC health and /health turn NOT_SERVING once store writes or pings have
    # failed for this long, and SERVING again at the first success (after a
    # failed write: the first successful write, a passing ping is not enough).
    store_down_after: Duration = Field(10.0, gt=0)
    # How often the store is pinged while it is failing or no writes succeed.
    store_check_interval: Duration = Field(1.0, gt=0)


class MetricsSettings(_Section):
    # false: no OpenTelemetry metrics at all and GET /metrics answers 404
    # (health endpoints stay); for measuring what telemetry costs.
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9464, ge=1, le=65535)
    # Open HTTP connections at most: sockets on this port must not use up the
    # file descriptors gRPC needs. Past it, the oldest connection still waiting
    # for its request is closed (or, with none, the new one).
    max_connections: int = Field(64, ge=1)
    # A connection is closed when its request head has not arrived within this
    # time of the connect (idle or sent slowly), or its response is not read within it.
    idle_timeout: Duration = Field(10.0, gt=0)


class ShutdownSettings(_Section):
    # Total budget from the first signal to exit; keep it below Kubernetes'
    # terminationGracePeriodSeconds.
    grace_period: Duration = 25.0


class AckMode(StrEnum):
    ACCEPTED = "accepted"
    DURABLE = "durable"
    COMMITTED = "committed"


class AckSettings(_Section):
    mode: AckMode = AckMode.ACCEPTED


class TlsSettings(_Section):
    # Both set: the gRPC port speaks TLS. client_ca_file set too: mTLS, clients
    # must present a certificate signed by that CA.
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None


class AuthSettings(_Section):
    # A YAML list of {name, key, roles, rate_limit_rps} (see aep/ingest/security.py);
    # unset: AdEventService needs no key.
    api_keys_file: Path | None = None
    # RPCs per second per key where the key sets none (0: unlimited).
    default_rate_limit_rps: float = Field(0.0, ge=0)


class WalSettings(_Section):
    # Unset: no write-ahead log, and ack mode `durable` is refused.
    dir: Path | None = None
    segment_bytes: ByteSize = Field(64 * 1024**2, ge=4096)
    # Start-up replay submits only while the queue is below this fill, so it
    # cannot crowd out live traffic.
    replay_max_queue_fill: float = Field(0.5, gt=0, le=1)


class Settings(_Section):
    """The whole configuration. Build it with load_settings()."""

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    batch: BatchSettings = BatchSettings()
    queue: QueueSettings = QueueSettings()
    retry: RetrySettings = RetrySettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    spill: SpillSettings = SpillSettings()
    validation: ValidationSettings = ValidationSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    metrics: MetricsSettings = MetricsSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    ack: AckSettings = AckSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    wal: WalSettings = WalSettings()

    @property
    def spills(self) -> bool:
        """Whether a full lane spills to disk (spill.policy; auto: several stores)."""
        policy = self.spill.policy
        return policy is SpillPolicy.ALWAYS or (
            policy is SpillPolicy.AUTO and len(self.database.type) > 1
        )

    @model_validator(mode="after")
    def _check_cross_field(self) -> Settings:
        if self.ack.mode is AckMode.DURABLE and self.wal.dir is None:
            raise ValueError(
                "ack.mode: 'durable' needs the write-ahead log: set wal.dir (AEP_WAL_DIR)"
            )
        if self.metrics.port == self.server.port and self.metrics.host == self.server.host:
            raise ValueError("metrics.port: must differ from server.port")
        return self


def iter_env_names(
    model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every (env var name, key path) pair of the configuration."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        section = _section_type(field)
        if section is not None:
            yield from iter_env_names(section, path)
        else:
            yield ENV_PREFIX + "_".join(path).upper(), path


def _section_type(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key."""


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    tree: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for env_name, path in iter_env_names():
        if env_name in environ:
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = environ[env_name]
            sources[path] = env_name
    return tree, sources


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    PyYAML keeps the last one silently, so a second `server:` section would
    drop the first without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below, with its own message
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"line {mark.line + 1}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: where, then what."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or error.context or "cannot parse"
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(error).split())


def _read_yaml(path: Path, origin: str) -> dict[str, Any]:
    """The file's top-level mapping; every way it can be unusable is a one-line ConfigError."""
    where = f"{path}{origin}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise ConfigError(f"{where}: config file not found") from error
    except IsADirectoryError as error:
        raise ConfigError(f"{where}: is a directory; give a YAML config file") from error
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the config file: {error.strerror}") from error
    try:
        text = raw.decode("utf-8-sig")  # tolerates the byte order mark some editors write
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{where}: not UTF-8 text (byte {error.start}); save the config file as UTF-8"
        ) from error
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML at {_yaml_problem(error)}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    for key in loaded:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: {key}: unknown key; sections are {_known(Settings)}")
    return loaded


def load_settings(
    config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults < YAML file (config_path or AEP_CONFIG) < AEP_* env vars."""
    environ = os.environ if environ is None else environ
    named_by = ""  # how the file was named, when not by the caller
    if config_path is None and environ.get(CONFIG_PATH_ENV):
        config_path = Path(environ[CONFIG_PATH_ENV])
        named_by = f"from {CONFIG_PATH_ENV}"
    from_file = {}
    file_origin = ""
    if config_path is not None:
        from_file = _read_yaml(config_path, f" ({named_by})" if named_by else "")
        file_origin = f" (in {config_path}, {named_by})" if named_by else f" (in {config_path})"
    from_env, env_sources = _env_overrides(environ)
    try:
        return Settings(**_merge(from_file, from_env))
    except ValidationError as error:
        raise ConfigError(_describe(error, env_sources, file_origin)) from error


def _known(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _section_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The section model a key path leads to (Settings for the empty path)."""
    model: type[BaseModel] = Settings
    for part in path:
        field = model.model_fields.get(part)
        section = _section_type(field) if field is not None else None
        if section is None:
            return None
        model = section
    return model


def _unknown_key(path: tuple[str, ...]) -> str:
    parent = path[:-1]
    section = _section_at(parent)
    if section is None:
        return "unknown key"
    prefix = ".".join(parent) + "." if parent else ""
    close = difflib.get_close_matches(path[-1], list(section.model_fields), n=1)
    if close:
        return f"unknown key; did you mean {prefix}{close[0]}?"
    return f"unknown key; {prefix.rstrip('.') or 'the top level'} has {_known(section)}"


def _describe(
    error: ValidationError, env_sources: Mapping[tuple[str, ...], str], file_origin: str = ""
) -> str:
    lines = []
    for problem in error.errors():
        path = tuple(str(part) for part in problem["loc"])
        key = ".".join(path) or "configuration"
        origin = f" (from {env_sources[path]})" if path in env_sources else file_origin
        if problem["type"] == "extra_forbidden":
            message = _unknown_key(path)
        elif problem["type"] == "model_type":
            message = f"must be a mapping of keys, not {problem['input']!r}"
        else:
            message = problem["msg"].removeprefix("Value error, ")
        if not path:  # a cross-field check; its message names its keys
            lines.append(message)
        else:
            lines.append(f"{key}: {message}{origin}")
    return "invalid configuration: " + "; ".join(lines)


def render_settings(settings: Settings) -> str:
    """The effective configuration as YAML, in the form the file accepts."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
