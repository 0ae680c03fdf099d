"""`make bench` still runs: tests/benchmarks/bench_ingest.py --quick end to end.

Not a timing test: it checks, from the figures the run writes with --json, that
every server of the benchmark (the bare baseline at the start and at the end,
both floors, the Go design, ours in both file formats with both codecs, ours
with part of its work taken out) answered every load with events and a server
CPU figure, that ours stored every event it acknowledged, and that the targets
were evaluated for every ours run. The figures come from the real run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ingest.py"
PYTHON_SERVERS = (
    "baseline",
    "baseline (end)",
    "floor: read",
    "floor: record",
    "ours (jsonl, native)",
    "ours (jsonl, python)",
    "ours (protobuf, native)",
    "ours (protobuf, python)",
    "ours: shell",
    "ours: no-validation",
)
GO_SERVER = "go (seed)"
LOADS = ("unary", "batch 100", "batch 1000", "stream 100")
GO_MISSING = (
    "go is not installed: the benchmark ran without the Go server "
    "(`make go-peer`, as root, installs Debian's golang-go and grpc-go and builds it)"
)


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One quick run of the benchmark for every test here; its --json figures."""
    output = tmp_path_factory.mktemp("bench") / "figures.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(output)]
    if shutil.which("go") is None:
        command.append("--no-go")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "targets (issue #16" in finished.stdout, finished.stdout
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def assert_answered_every_load(server: dict[str, Any]) -> None:
    assert set(server["loads"]) == set(LOADS)
    for load, figures in server["loads"].items():
        assert figures["events"] > 0, load
        assert figures["cpu_seconds"] > 0, load
        assert figures["cpu_us_per_event"] > 0, load
        assert figures["events_per_s"] > 0, load


def test_every_python_server_answers_every_load_with_events_and_cpu(
    figures: dict[str, Any],
) -> None:
    servers = figures["servers"]
    assert set(servers) - {GO_SERVER} == set(PYTHON_SERVERS)
    for name in PYTHON_SERVERS:
        assert_answered_every_load(servers[name])


def test_ours_stores_what_it_acknowledged_and_every_target_is_evaluated(
    figures: dict[str, Any],
) -> None:
    ours = {name: s for name, s in figures["servers"].items() if s["kind"] == "ours"}
    assert {(s["file_format"], s["codec"]) for s in ours.values()} == {
        (file_format, codec)
        for file_format in ("jsonl", "protobuf")
        for codec in ("native", "python")
    }
    for name, server in ours.items():
        assert server["exit_code"] == 0, name
        assert server["acknowledged"] > 0, name
        assert server["stored"] == server["acknowledged"], name
        assert server["paced_half_batch_100"]["events"] > 0, name
    assert set(figures["cpu_efficiency"]) == set(ours)
    evaluated = {(t["server"], t["description"]) for t in figures["targets"]}
    assert len(evaluated) == 6 * len(ours)
    assert not figures["failed"]


def test_the_go_server_answers_every_load_and_writes_what_it_acknowledged(
    figures: dict[str, Any],
) -> None:
    if not figures["go"]["ran"]:
        reason = figures["go"]["skipped"]
        pytest.skip(GO_MISSING if reason == "--no-go" else f"the Go server was not run: {reason}")
    go = figures["servers"][GO_SERVER]
    assert_answered_every_load(go)
    assert go["exit_code"] == 0
    assert go["stored"] == go["acknowledged"] > 0
    assert figures["go"]["gomaxprocs"] == "1"
    for per_load in figures["cpu_efficiency"].values():
        assert all(ratios["vs_go"] > 0 for ratios in per_load.values())
