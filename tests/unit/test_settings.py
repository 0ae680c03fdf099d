from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aep.settings import (
    AckMode,
    ConfigError,
    FsyncPolicy,
    StartupPolicy,
    StoreType,
    format_duration,
    format_size,
    iter_env_names,
    load_settings,
    parse_duration,
    parse_size,
)
from tests.helpers.support import free_port


def test_defaults_run_the_file_store_on_the_contract_ports() -> None:
    settings = load_settings(environ={})
    assert settings.database.type == (StoreType.FILE,)
    assert settings.server.port == 8080
    assert settings.metrics.port == 9464
    assert settings.ack.mode is AckMode.ACCEPTED
    assert settings.database.mongodb.database == "ad_events"
    assert settings.database.redis.stream == "ad_events"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("5s", 5.0), ("1m", 60.0), ("1h", 3600.0), ("250us", 0.00025), ("3", 3.0)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(parse_duration(text))) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 parsecs", "-1s", "ms", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_sizes_parse() -> None:
    assert parse_size("4MiB") == 4 * 1024 * 1024
    assert parse_size("64KiB") == 65536
    assert parse_size(1000) == 1000
    with pytest.raises(ValueError, match="size"):
        parse_size("4 lightyears")


def test_env_overrides_yaml_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "batch": {"size": 50, "flush_interval": "2s"},
                "database": {"type": "file", "file": {"dir": "/from/yaml"}},
                "logging": {"level": "debug"},
            }
        )
    )
    settings = load_settings(
        config,
        environ={"AEP_BATCH_FLUSH_INTERVAL": "200ms", "AEP_DATABASE_FILE_DIR": "/from/env"},
    )
    assert settings.batch.size == 50  # YAML beats the default
    assert settings.batch.flush_interval == pytest.approx(0.2)  # env beats YAML
    assert settings.database.file.dir == Path("/from/env")
    assert settings.logging.level.value == "debug"
    assert settings.batch.worker_pool_size == 4  # default kept


def test_config_path_from_aep_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9999\n")
    assert load_settings(environ={"AEP_CONFIG": str(config)}).server.port == 9999


def test_reference_env_names_map_to_keys() -> None:
    names = dict(iter_env_names())
    expected = {
        "AEP_SERVER_HOST": ("server", "host"),
        "AEP_SERVER_PORT": ("server", "port"),
        "AEP_DATABASE_TYPE": ("database", "type"),
        "AEP_DATABASE_FILE_DIR": ("database", "file", "dir"),
        "AEP_DATABASE_REDIS_URL": ("database", "redis", "url"),
        "AEP_DATABASE_MONGODB_URI": ("database", "mongodb", "uri"),
        "AEP_DATABASE_MONGODB_DATABASE": ("database", "mongodb", "database"),
        "AEP_BATCH_SIZE": ("batch", "size"),
        "AEP_BATCH_FLUSH_INTERVAL": ("batch", "flush_interval"),
        "AEP_BATCH_WORKER_POOL_SIZE": ("batch", "worker_pool_size"),
        "AEP_LOGGING_LEVEL": ("logging", "level"),
        "AEP_METRICS_PORT": ("metrics", "port"),
        "AEP_ACK_MODE": ("ack", "mode"),
        "AEP_WAL_DIR": ("wal", "dir"),
    }
    for env_name, path in expected.items():
        assert names[env_name] == path


def test_every_env_name_is_unambiguous() -> None:
    names = [name for name, _ in iter_env_names()]
    assert len(names) == len(set(names))


def test_unknown_aep_env_vars_are_ignored() -> None:
    # Kubernetes injects <SERVICE>_PORT=tcp://... for a Service called "aep".
    settings = load_settings(environ={"AEP_PORT": "tcp://10.0.0.1:8080", "AEP_SERVICE_HOST": "x"})
    assert settings.server.port == 8080


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"AEP_BATCH_SIZE": "abc"}, "batch.size"),
        ({"AEP_BATCH_SIZE": "0"}, "batch.size"),
        ({"AEP_BATCH_FLUSH_INTERVAL": "soon"}, "batch.flush_interval"),
        ({"AEP_DATABASE_TYPE": "postgres"}, "database.type"),
        ({"AEP_SERVER_PORT": "70000"}, "server.port"),
        ({"AEP_DATABASE_FILE_FSYNC": "sometimes"}, "database.file.fsync"),
        ({"AEP_ACK_MODE": "durable"}, "ack.mode"),
    ],
)
def test_bad_values_name_the_key_and_the_env_var(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)
    message = str(raised.value)
    assert fragment in message
    env_name = next(iter(environ))
    if env_name != "AEP_ACK_MODE":
        assert env_name in message


def test_unknown_yaml_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("batch:\n  sise: 10\n")
    with pytest.raises(ConfigError, match=r"batch\.sise"):
        load_settings(config, environ={})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_fsync_policy_values() -> None:
    settings = load_settings(environ={"AEP_DATABASE_FILE_FSYNC": "interval"})
    assert settings.database.file.fsync is FsyncPolicy.INTERVAL


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aep", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_print_config_shows_the_effective_configuration(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "AEP_BATCH_FLUSH_INTERVAL": "200ms", "AEP_BATCH_SIZE": "77"}
    result = _run_cli("--print-config", env=env)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["batch"]["size"] == 77
    assert printed["batch"]["flush_interval"] == "200ms"
    # What --print-config prints is itself a config file giving the same settings.
    assert load_settings(environ={}).batch.size != 77
    printed_file = tmp_path / "printed.yaml"
    printed_file.write_text(result.stdout)
    reloaded = load_settings(printed_file, environ={})
    assert reloaded == load_settings(
        environ={"AEP_BATCH_FLUSH_INTERVAL": "200ms", "AEP_BATCH_SIZE": "77"}
    )


def test_help_lists_every_env_var() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    for env_name, _ in iter_env_names():
        assert env_name in result.stdout


def test_bad_value_exits_non_zero_before_listening() -> None:
    import os

    port = free_port()
    env = {**os.environ, "AEP_SERVER_PORT": str(port), "AEP_BATCH_SIZE": "lots"}
    started = time.monotonic()
    result = _run_cli(env=env)
    assert result.returncode == 2
    assert "batch.size" in result.stderr and "AEP_BATCH_SIZE" in result.stderr
    assert time.monotonic() - started < 20
    import socket

    with socket.socket() as probe:  # nothing was left listening
        probe.bind(("127.0.0.1", port))


def test_store_keys_have_their_env_vars() -> None:
    settings = load_settings(
        environ={
            "AEP_DATABASE_TYPE": "redis",
            "AEP_DATABASE_STARTUP": "wait",
            "AEP_DATABASE_CONNECT_TIMEOUT": "2s",
            "AEP_DATABASE_OPERATION_TIMEOUT": "500ms",
            "AEP_DATABASE_REDIS_MAX_LEN": "1000000",
            "AEP_DATABASE_REDIS_DEDUPE_WINDOW": "1h",
            "AEP_DATABASE_REDIS_COUNTERS": "true",
            "AEP_DATABASE_REDIS_COUNTERS_TTL": "2h",
            "AEP_DATABASE_MONGODB_TTL": "720h",
            "AEP_DATABASE_MONGODB_COLLECTION": "clicks",
            "AEP_HEALTH_STORE_DOWN_AFTER": "3s",
            "AEP_HEALTH_STORE_CHECK_INTERVAL": "250ms",
        }
    )
    database = settings.database
    assert database.type == (StoreType.REDIS,)
    assert database.startup is StartupPolicy.WAIT
    assert (database.connect_timeout, database.operation_timeout) == (2.0, 0.5)
    assert database.redis.max_len == 1_000_000
    assert database.redis.dedupe_window == 3600.0
    assert database.redis.counters is True
    assert database.redis.counters_ttl == 7200.0
    assert database.mongodb.ttl == 720 * 3600.0
    assert database.mongodb.collection == "clicks"
    assert settings.health.store_down_after == 3.0
    assert settings.health.store_check_interval == 0.25


def test_store_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.database.startup is StartupPolicy.FAIL_FAST
    assert settings.database.redis.max_len == 0
    assert settings.database.redis.counters is False
    assert settings.database.redis.min_replicas_acked == 0  # the primary's ack is enough
    assert settings.database.redis.replica_ack_timeout == 1.0
    assert settings.database.mongodb.ttl == 0
    assert settings.database.mongodb.collection == "events"
    assert settings.health.store_down_after == 10.0


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"AEP_DATABASE_STARTUP": "later"}, "database.startup"),
        ({"AEP_DATABASE_CONNECT_TIMEOUT": "0s"}, "database.connect_timeout"),
        ({"AEP_DATABASE_REDIS_MAX_LEN": "-1"}, "database.redis.max_len"),
        ({"AEP_DATABASE_REDIS_MIN_REPLICAS_ACKED": "-1"}, "database.redis.min_replicas_acked"),
        ({"AEP_DATABASE_REDIS_REPLICA_ACK_TIMEOUT": "0s"}, "database.redis.replica_ack_timeout"),
        ({"AEP_HEALTH_STORE_DOWN_AFTER": "0"}, "health.store_down_after"),
    ],
)
def test_bad_store_values_name_the_key(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_settings(environ=environ)


def test_replay_dlq_help_describes_the_command() -> None:
    result = _run_cli("replay-dlq", "--help")
    assert result.returncode == 0
    assert "replayed/" in result.stdout
    assert "--config PATH" in result.stdout
    top = _run_cli("--help")
    assert "replay-dlq" in top.stdout


def test_max_event_age_is_bounded_so_a_missing_timestamp_stays_too_old() -> None:
    from pydantic import ValidationError

    from aep.settings import ValidationSettings

    with pytest.raises(ValidationError, match="max_event_age"):
        ValidationSettings.model_validate({"max_event_age": f"{11 * 365 * 24}h"})
    ten_years = ValidationSettings.model_validate({"max_event_age": f"{10 * 365 * 24}h"})
    assert ten_years.max_event_age == 10 * 365 * 24 * 3600


# A newcomer's broken config files: each must end with exit 2 and one line on
# stderr naming the file and what is wrong with it, never a traceback.
_BROKEN_CONFIGS: dict[str, tuple[bytes | None, str]] = {
    "a-directory": (None, "is a directory"),
    "latin1.yaml": ("batch:\n  size: 5 # caf\xe9\n".encode("latin-1"), "not UTF-8"),
    "missing.yaml": (b"", "not found"),
    "invalid.yaml": (b"server: [\n", "not valid YAML at line 2"),
    "list.yaml": (b"- server\n- batch\n", "top level must be a mapping"),
    "scalar.yaml": (b"hello\n", "top level must be a mapping"),
    "unknown.yaml": (b"batch:\n  sise: 10\n", "batch.sise: unknown key; did you mean batch.size?"),
    "int-key.yaml": (b"1: 2\n", "1: unknown key"),
    "section.yaml": (b"batch: 5\n", "batch: must be a mapping of keys"),
    "twice.yaml": (b"server:\n  port: 1\nserver:\n  port: 2\n", "'server' appears twice"),
}


def _write_broken_config(directory: Path, name: str) -> Path:
    path = directory / name
    content, _ = _BROKEN_CONFIGS[name]
    if content is None:
        path.mkdir()
    elif name != "missing.yaml":
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("how", ["--config", "AEP_CONFIG"])
@pytest.mark.parametrize("name", sorted(_BROKEN_CONFIGS))
def test_a_broken_config_file_exits_2_with_one_line_naming_it(
    tmp_path: Path, name: str, how: str
) -> None:
    import os

    path = _write_broken_config(tmp_path, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEP_")}
    if how == "--config":
        result = _run_cli("--config", str(path), "--print-config", env=env)
    else:
        result = _run_cli("--print-config", env={**env, "AEP_CONFIG": str(path)})
    print(f"{how} {name}: exit {result.returncode}: {result.stderr.strip()[-300:]}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert _BROKEN_CONFIGS[name][1] in lines[0]
    if how == "AEP_CONFIG":
        assert "AEP_CONFIG" in lines[0]


def test_a_config_file_with_a_utf8_byte_order_mark_is_read(tmp_path: Path) -> None:
    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbfbatch:\n  size: 7\n")
    assert load_settings(config, environ={}).batch.size == 7


def test_a_bad_value_from_the_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("batch:\n  flush_interval: soon\n")
    with pytest.raises(ConfigError, match=r"batch\.flush_interval: .*\(in .*c\.yaml\)"):
        load_settings(config, environ={})


def test_a_bare_number_is_a_duration_in_seconds() -> None:
    settings = load_settings(environ={"AEP_BATCH_FLUSH_INTERVAL": "5"})
    assert settings.batch.flush_interval == 5.0
    assert load_settings(environ={"AEP_BATCH_FLUSH_INTERVAL": "0.5"}).batch.flush_interval == 0.5


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("2048B", 2048),
        ("64KB", 64_000),
        ("64MB", 64_000_000),
        ("1GB", 1_000_000_000),
        ("64KiB", 64 * 1024),
        ("64MiB", 64 * 1024**2),
        ("1GiB", 1024**3),
        ("64 mib", 64 * 1024**2),
    ],
)
def test_sizes_take_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size  # --print-config writes what it reads
    assert load_settings(environ={"AEP_QUEUE_MAX_BYTES": text}).queue.max_bytes == size


@pytest.mark.parametrize("text", ["64M", "64k", "1.5MiB", "lots", "-1"])
def test_a_size_without_a_known_unit_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"AEP_WAL_SEGMENT_BYTES": text})
    message = str(raised.value)
    assert "wal.segment_bytes" in message and "AEP_WAL_SEGMENT_BYTES" in message
    assert "bytes" in message and "MiB" in message and "MB" in message


def _plain(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def test_readme_and_help_describe_durations_and_sizes_as_the_code_reads_them() -> None:
    from aep.settings import DURATION_FORMS, SIZE_FORMS

    readme = _plain((Path(__file__).parents[2] / "docs" / "configuration.md").read_text())
    help_text = _plain(_run_cli("--help").stdout)
    for forms in (DURATION_FORMS, SIZE_FORMS):
        assert _plain(forms) in readme
        assert _plain(forms) in help_text
    # The examples the text gives are ones the code takes.
    assert parse_duration("5") == 5.0
    for example in ("500us", "200ms", "5s", "1m", "1h"):
        assert example in DURATION_FORMS
        parse_duration(example)
    for example, size in (("64KB", 64_000), ("64MiB", 64 * 1024**2), ("65536", 65536)):
        assert example in SIZE_FORMS
        assert parse_size(example) == size


def test_help_shows_each_variable_with_its_default_and_the_replay_command() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if "AEP_" in line[:6]}
    assert "200ms" in lines["AEP_BATCH_FLUSH_INTERVAL"]
    assert "8080" in lines["AEP_SERVER_PORT"]
    assert "64MiB" in lines["AEP_QUEUE_MAX_BYTES"]
    usage = result.stdout.split("\n\n", 1)[0]
    assert "replay-dlq" in usage
    assert "COMMAND ..." not in usage  # reads as if a command were required
