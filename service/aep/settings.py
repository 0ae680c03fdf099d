"""Configuration: defaults, overridden by a YAML file, overridden by `AEP_` env vars.

Every key has one env var: the key path upper-cased and joined with single
underscores, behind `AEP_` (`batch.flush_interval` -> `AEP_BATCH_FLUSH_INTERVAL`,
`database.file.dir` -> `AEP_DATABASE_FILE_DIR`). Env vars that name no key are
ignored, because Kubernetes injects `<SERVICE>_PORT`-style variables for every
Service in the namespace and a Service called "aep" must not break the pod.

Durations are written `500us`, `200ms`, `5s`, `1m`, `1h` (a bare number means
seconds); sizes `512`, `64KiB`, `4MiB`, `1GiB`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "AEP_"
CONFIG_PATH_ENV = "AEP_CONFIG"

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 10**6}
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
            raise ValueError(f"{value!r} is not a duration; write e.g. 200ms, 5s, 1m")
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
        raise ValueError("expected a size such as 4MiB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_PATTERN.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; write e.g. 65536, 64KiB, 4MiB")
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
ByteSize = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


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
    # at most this much unread data (besides its unacknowledged chunks).
    receive_window: ByteSize = Field(64 * 1024, ge=16 * 1024, le=2**31 - 1)
    # StreamAdEvents flow control: chunks read but not yet acknowledged, per
    # stream; past it the server stops reading and HTTP/2 holds the client.
    stream_max_unacked_chunks: int = Field(64, ge=1)
    # How long a stream waits for queue room before ending with RESOURCE_EXHAUSTED.
    stream_backpressure_wait: Duration = 5.0


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
    # Each remembered id costs ~120 B of RSS (measured with tests/benchmarks/soak.py).
    dedupe_max_ids: int = Field(500_000, ge=0)


class RedisStoreSettings(_Section):
    url: str = "redis://localhost:6379/0"
    stream: str = Field("ad_events", min_length=1)
    # XADD MAXLEN ~ max_len: approximate trimming, cheap; 0 keeps every entry.
    max_len: int = Field(0, ge=0)
    # An event_id seen within this window is not appended again. Each id costs
    # one key of ~140 bytes for the window: events/s x window x 140 B of memory.
    dedupe_window: Duration = Field(600.0, ge=1)
    # Per-minute counts by ad and event type, in hashes `{<stream>}:counts:<minute>`.
    counters: bool = False
    counters_ttl: Duration = Field(86400.0, ge=1)


class MongoStoreSettings(_Section):
    uri: str = "mongodb://localhost:27017"
    database: str = Field("ad_events", min_length=1)
    collection: str = Field("events", min_length=1)
    # TTL index on received_at; 0 keeps documents forever (and dedupes forever).
    ttl: Duration = 0.0


class StoreType(StrEnum):
    FILE = "file"
    REDIS = "redis"
    MONGODB = "mongodb"


class StartupPolicy(StrEnum):
    FAIL_FAST = "fail_fast"  # exit with code 3 when the store cannot be reached at start
    WAIT = "wait"  # listen NOT_SERVING and keep trying until the store answers


class DatabaseSettings(_Section):
    type: StoreType = StoreType.FILE
    startup: StartupPolicy = StartupPolicy.FAIL_FAST
    # Bounds connecting and the start-up ping of a network store (Redis, MongoDB).
    connect_timeout: Duration = Field(5.0, gt=0)
    # Bounds one call to a network store (a batch write, a ping); a call that
    # takes longer fails and the pipeline retries it (writes are idempotent).
    operation_timeout: Duration = Field(10.0, gt=0)
    file: FileStoreSettings = FileStoreSettings()
    redis: RedisStoreSettings = RedisStoreSettings()
    mongodb: MongoStoreSettings = MongoStoreSettings()


class BatchSettings(_Section):
    size: int = Field(500, ge=1)
    flush_interval: Duration = Field(0.2, gt=0)
    worker_pool_size: int = Field(4, ge=1, le=256)


class QueueSettings(_Section):
    # Admission bounds: accepted events not yet written count against both.
    # A queued event costs ~1 KB of RSS (the stored form as Python objects),
    # several times its wire size: max_events is the bound that matters for memory.
    max_events: int = Field(100_000, ge=1)
    max_bytes: ByteSize = Field(64 * 1024**2, ge=1024)


class RetrySettings(_Section):
    max_attempts: int = Field(5, ge=1)
    initial_backoff: Duration = 0.1
    max_backoff: Duration = 5.0


class DeadLetterSettings(_Section):
    # Batches that still fail after retry.max_attempts are appended here as
    # JSON Lines ({"reason", "failed_at", "attempts", "event"}).
    dir: Path = Path("data/dead-letter")


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
    # failed for this long, and SERVING again at the first success.
    store_down_after: Duration = Field(10.0, gt=0)
    # How often the store is pinged while it is failing or no writes succeed.
    store_check_interval: Duration = Field(1.0, gt=0)


class MetricsSettings(_Section):
    # false: no OpenTelemetry metrics at all and GET /metrics answers 404
    # (health endpoints stay); for measuring what telemetry costs.
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9464, ge=1, le=65535)


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
    # A YAML list of {name, key, roles, rate_limit_rps} (see aep/security.py);
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


class Settings(BaseSettings):
    """The whole configuration. Build it with load_settings()."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    batch: BatchSettings = BatchSettings()
    queue: QueueSettings = QueueSettings()
    retry: RetrySettings = RetrySettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    validation: ValidationSettings = ValidationSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    metrics: MetricsSettings = MetricsSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    ack: AckSettings = AckSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    wal: WalSettings = WalSettings()

    @model_validator(mode="after")
    def _check_cross_field(self) -> Settings:
        if self.ack.mode is AckMode.DURABLE and self.wal.dir is None:
            raise ValueError(
                "ack.mode: 'durable' needs the write-ahead log: set wal.dir (AEP_WAL_DIR)"
            )
        if self.metrics.port == self.server.port and self.metrics.host == self.server.host:
            raise ValueError("metrics.port: must differ from server.port")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: explicit arguments (the YAML file, passed by
        # load_settings), then env vars layered on top by _merge in load_settings.
        return (init_settings,)


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


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def load_settings(
    config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults < YAML file (config_path or AEP_CONFIG) < AEP_* env vars."""
    environ = os.environ if environ is None else environ
    if config_path is None and environ.get(CONFIG_PATH_ENV):
        config_path = Path(environ[CONFIG_PATH_ENV])
    from_file = _read_yaml(config_path) if config_path is not None else {}
    from_env, env_sources = _env_overrides(environ)
    try:
        return Settings(**_merge(from_file, from_env))
    except ValidationError as error:
        raise ConfigError(_describe(error, env_sources)) from error


def _describe(error: ValidationError, env_sources: Mapping[tuple[str, ...], str]) -> str:
    lines = []
    for problem in error.errors():
        path = tuple(str(part) for part in problem["loc"])
        key = ".".join(path) or "configuration"
        origin = f" (from {env_sources[path]})" if path in env_sources else ""
        message = problem["msg"].removeprefix("Value error, ")
        if not path:  # a cross-field check; its message names its keys
            lines.append(message)
        else:
            lines.append(f"{key}: {message}{origin}")
    return "invalid configuration: " + "; ".join(lines)


def render_settings(settings: Settings) -> str:
    """The effective configuration as YAML, in the form the file accepts."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
