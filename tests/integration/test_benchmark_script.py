"""`make bench` still runs: a tiny scale of tests/benchmarks/bench_ingest.py end to end.

Not a timing test: it checks that every server of the benchmark (the bare
baseline, both floors, ours in both file formats, ours with part of its work
taken out) answers every load, and that ours stored every event it acknowledged.
The figures come from the real run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ingest.py"
SERVERS = (
    "baseline",
    "baseline (end)",
    "floor: read",
    "floor: record",
    "ours (jsonl)",
    "ours (protobuf)",
    "ours: shell",
    "ours: no-validation",
)
LOADS = ("unary", "batch 100", "batch 1000", "stream 100")


@pytest.mark.timeout(300)
def test_the_benchmark_runs_every_server_and_load_and_stores_what_ours_acknowledged() -> None:
    finished = subprocess.run(
        [sys.executable, str(SCRIPT), "--scale", "0.01"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = {
        (match["load"], match["server"]): float(match["rate"].replace(",", ""))
        for match in re.finditer(
            r"^(?P<load>unary|batch 100|batch 1000|stream 100)\s+"
            r"(?P<server>baseline(?: \(end\))?|floor: \w+|ours \(\w+\)|ours: [\w-]+)\s+"
            r"(?P<rate>[\d,]+)",
            finished.stdout,
            re.MULTILINE,
        )
    }
    assert set(rows) == {(load, server) for load in LOADS for server in SERVERS}
    assert all(rate > 0 for rate in rows.values())
    assert finished.stdout.count("(all stored)") == 2, finished.stdout
