"""The native pass under AddressSanitizer + UBSan, and a bounded coverage-guided fuzz run.

- The codec tests (differential and unit) and the IdSet tests run again in a
  child Python against a build of _native.c + codec_core.c + id_set.c with
  -fsanitize=address,undefined
  (gcc; its ASan runtime preloaded). Any report fails the run.
- libFuzzer (clang) drives the C entry point (tests/fuzz/fuzz_codec.c) for
  AEP_FUZZ_SECONDS (default 60) under ASan + UBSan, from seeds of every
  request kind; then every input of the corpus it grew goes through the
  differential comparison with the Python reference.

Both need compilers (.ci/system-deps installs clang); without them the tests
skip, except in CI (CI set), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aep.events.codec import RequestKind, native_codec_problem
from aep.settings import ValidationSettings
from tests.helpers.codec_wire import delimited, pair, tag, varint
from tests.helpers.native_build import (
    REPO,
    build_extension,
    build_fuzzer,
    compiler,
    sanitizer_environment,
)

pytestmark = pytest.mark.sanitizers

FUZZ_SECONDS = int(os.environ.get("AEP_FUZZ_SECONDS", "60"))
# The harness's limits and clock (tests/fuzz/fuzz_codec.c).
FUZZ_LIMITS = ValidationSettings(
    max_id_length=6,
    max_attributes=3,
    max_attribute_key_length=3,
    max_attribute_value_length=4,
    max_event_age=100,
    max_clock_skew=10,
)
FUZZ_NOW = 1000.25


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if not any(compiler(name) for name in tool.split("|"))]
    if missing:
        message = f"needs {', '.join(missing)} (.ci/system-deps installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_codec_tests_pass_under_address_and_undefined_behaviour_sanitizers(
    tmp_path: Path,
) -> None:
    _require("gcc")
    started = time.monotonic()
    extension = build_extension(
        tmp_path / "asan",
        [
            "-g",
            "-O1",
            "-fno-omit-frame-pointer",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
        ],
    )
    env = sanitizer_environment(extension)
    env["AEP_CODEC_EXAMPLES"] = os.environ.get("AEP_SANITIZER_EXAMPLES", "200")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-s",  # a sanitizer's report goes to the real stderr, before it aborts
            str(REPO / "tests" / "unit" / "test_codec_differential.py"),
            str(REPO / "tests" / "unit" / "test_codec.py"),
            str(REPO / "tests" / "unit" / "test_id_set.py"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    print(f"sanitized codec tests: exit {result.returncode} in {time.monotonic() - started:.0f}s")
    print(tail.strip().splitlines()[-1] if tail.strip() else "")
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, tail
    assert "Sanitizer" not in result.stderr, tail


def _seeds() -> dict[str, bytes]:
    """One request of each kind the harness reads (first byte: the kind)."""
    stamp = delimited(5, tag(1, 0) + varint(int(FUZZ_NOW)) + tag(2, 0) + varint(5_000))
    event = b"".join(
        [
            delimited(1, b"e1"),
            delimited(2, b"u"),
            delimited(3, b"a"),
            tag(4, 0) + varint(2),
            stamp,
            delimited(6, b"c"),
            tag(10, 0) + varint(7),
            delimited(11, b"USD"),
            delimited(12, delimited(1, b"k") + delimited(2, b'v"\n')),
            delimited(12, delimited(1, b"a") + delimited(2, "é".encode())),
        ]
    )
    unnamed = event.replace(delimited(1, b"e1"), b"")
    return {
        "single": bytes([RequestKind.SINGLE]) + delimited(1, event) + tag(2, 0) + varint(1),
        "batch": bytes([RequestKind.BATCH])
        + delimited(1, event)
        + delimited(1, unnamed)
        + delimited(1, delimited(2, b"u"))
        + tag(2, 0)
        + varint(3),
        "stream": bytes([RequestKind.STREAM])
        + tag(1, 0)
        + varint(42)
        + delimited(2, unnamed) * 3
        + delimited(15, b"\xff"),
    }


def test_fuzz_the_c_entry_point_then_compare_its_corpus(tmp_path: Path) -> None:
    _require("clang-14|clang")
    if native_codec_problem() is not None:
        pytest.skip(f"the native codec is not built: {native_codec_problem()}")
    fuzzer = build_fuzzer(tmp_path / "fuzz_codec")
    corpus = tmp_path / "corpus"
    seeds = tmp_path / "seeds"
    corpus.mkdir()
    seeds.mkdir()
    for name, data in _seeds().items():
        (seeds / name).write_bytes(data)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(fuzzer),
            f"-max_total_time={FUZZ_SECONDS}",
            "-max_len=4096",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(corpus),
            str(seeds),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
    )
    elapsed = time.monotonic() - started
    stats = [line for line in result.stderr.splitlines() if line.startswith("stat::")]
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    print(
        f"fuzzed {elapsed:.0f}s: exit {result.returncode}, {len(list(corpus.iterdir()))} "
        f"corpus inputs, {'; '.join(stats[:3])}"
    )
    assert result.returncode == 0 and not crashes, result.stderr[-6000:]
    # Coverage-guided inputs are good differential cases too.
    codecs = pair(FUZZ_LIMITS)
    from tests.helpers.codec_wire import compare

    outcomes: dict[str, int] = {}
    for path in sorted(corpus.iterdir()):
        data = path.read_bytes()
        if not data:
            continue
        kind = RequestKind(data[0] % 3)
        outcome = compare(codecs, kind, data[1:], now=FUZZ_NOW)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"fuzz corpus through both codecs: {outcomes}")
    assert sum(outcomes.values()) > 10
