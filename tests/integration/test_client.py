"""ad-event-client against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.support import ServerProcess, free_port, running_server, stored_events

pytestmark = pytest.mark.integration


def client(*args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aep.tools.client", *(["--quiet"] if quiet else []), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("mode", "extra", "events"),
    [
        ("single", [], 20),
        ("batch", ["--batch", "25"], 100),
        ("load", ["--batch", "1", "--concurrent", "8"], 200),
        ("load", ["--batch", "50", "--concurrent", "4"], 1000),
    ],
)
def test_modes_send_and_report(
    server: ServerProcess, tmp_path: Path, mode: str, extra: list[str], events: int
) -> None:
    ids_file = tmp_path / "ids.txt"
    result = client(
        "--server",
        server.address,
        "--mode",
        mode,
        "--events",
        str(events),
        "--json",
        "--ids-out",
        str(ids_file),
        *extra,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["accepted"] == events
    assert summary["rejected"] == 0
    assert summary["events_per_s"] > 0
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99", "max"}
    acknowledged = ids_file.read_text().split()
    assert len(set(acknowledged)) == events
    assert server.stop() == 0
    assert {e["event_id"] for e in stored_events(server.events_dir)} == set(acknowledged)


def test_human_output_has_rate_and_percentiles(server: ServerProcess) -> None:
    result = client(
        "--server", server.address, "--mode", "load", "--events", "300", "--batch", "10"
    )
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stdout
    assert "p99" in result.stdout


def test_health_mode(server: ServerProcess) -> None:
    result = client("--server", server.address, "--mode", "health")
    assert result.returncode == 0, result.stderr
    assert "status=SERVING_STATUS_SERVING" in result.stdout
    assert "grpc_health=SERVING" in result.stdout


def test_unreachable_server_exits_2() -> None:
    result = client(
        "--server", f"127.0.0.1:{free_port()}", "--mode", "single", "--connect-timeout", "1"
    )
    assert result.returncode == 2
    assert "cannot reach" in result.stderr


def test_rejections_exit_1(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_SERVER_MAX_BATCH_EVENTS="5") as server:
        result = client(
            "--server", server.address, "--mode", "batch", "--events", "20", "--batch", "10"
        )
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stdout
    assert "server.max_batch_events=5" in result.stdout


def _progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("progress:")]


def test_progress_counts_accepted_events_not_sent_ones(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_SERVER_MAX_BATCH_EVENTS="5") as server:
        result = client(
            "--server",
            server.address,
            "--mode",
            "batch",
            "--events",
            "20",
            "--batch",
            "10",
            quiet=False,
        )
    lines = _progress_lines(result.stderr)
    print(f"every batch refused: exit {result.returncode}, progress {lines}")
    assert result.returncode == 1
    assert lines, result.stderr
    assert "0 accepted" in lines[-1]


def test_stream_mode_shows_progress_and_per_chunk_latency(server: ServerProcess) -> None:
    result = client(
        "--server",
        server.address,
        "--mode",
        "stream",
        "--events",
        "200",
        "--batch",
        "20",
        quiet=False,
    )
    assert result.returncode == 0, result.stderr
    lines = _progress_lines(result.stderr)
    print(f"stream: progress {lines}")
    assert lines, result.stderr
    assert lines[-1].startswith("progress: 200/200 events") and "200 accepted" in lines[-1]
    assert "latency per chunk" in result.stdout


def test_durable_ack_mode_can_be_asked_for(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_WAL_DIR=str(tmp_path / "wal")) as server:
        result = client(
            "--server",
            server.address,
            "--mode",
            "batch",
            "--events",
            "30",
            "--batch",
            "10",
            "--ack-mode",
            "durable",
            "--json",
        )
    print(f"--ack-mode durable: exit {result.returncode}: {result.stdout.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == 30


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--max-retries", "-3"),
        ("--timeout", "-1"),
        ("--timeout", "0"),
        ("--timeout", "nan"),
        ("--connect-timeout", "-1"),
        ("--connect-timeout", "inf"),
    ],
)
def test_a_bad_number_is_a_usage_error(server: ServerProcess, option: str, value: str) -> None:
    result = client("--server", server.address, "--mode", "batch", option, value)
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    print(f"{option} {value}: exit {result.returncode}: {last}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert last.startswith(f"ad-event-client: error: argument {option}:")


def test_help_shows_the_defaults() -> None:
    result = client("--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for shown in (
        "(default: localhost:8080)",
        "(default: single)",
        "(default: 100)",
        "(default: 10.0)",
        "(default: 5)",
        "durable",
    ):
        assert shown in help_text
    assert "(default: None)" not in help_text
    assert "(default: False)" not in help_text


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
        (["--ids-out", "/nonexistent/dir/ids.txt"], "--ids-out"),
        (["--tls-cert", "cert.pem", "--tls-key", "key.pem"], "--tls-cert"),
    ],
)
def test_a_file_option_that_cannot_work_is_a_usage_error_before_sending(
    server: ServerProcess, args: list[str], option: str
) -> None:
    result = client("--server", server.address, "--mode", "batch", *args)
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    print(f"{' '.join(args)}: exit {result.returncode}: {last}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert last.startswith("ad-event-client: error:") and option in last
    assert result.stdout == ""  # nothing was sent
    assert server.stop() == 0
    assert stored_events(server.events_dir) == []
