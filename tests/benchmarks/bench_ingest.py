"""`make bench`: our service against the bare-gRPC limit, on this machine, in one run.

Starts a bare grpc.aio baseline server (same proto, handlers only count) and
ad-event-processor on the file store (JSON Lines), each pinned to CPU 0, and
drives both with the same pre-serialised load from a driver pinned to CPU 1:
unary, batches of 100, batches of 1000, a stream of 100-event chunks. Prints,
per load: events/s, p50/p99 latency, server CPU seconds per million events,
peak RSS, and ours/baseline. Then p99 at half our batch-100 maximum, idle
RSS, and (with --overload-seconds) RSS under twice the sustainable load. The
baseline runs again at the end; ratios are to the mean of its two runs.
Unless --no-floors, two variants of the baseline run the same loads with
handlers that read every field of every event, or also build and encode the
stored form: the most any pure-Python ingest service could reach.
Unless --no-ablations, ours (JSON Lines) runs them again twice with part of
its work taken out (see ablated_server.py): its handlers answering without
doing anything (the server shell), and without validation (the path after it).
Everything talks to 127.0.0.1 only; every load is bounded in count.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: tests.helpers
from tests.helpers.support import free_port, stored_events  # noqa: E402

SERVER_CPU = 0
DRIVER_CPU = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    name: str
    shape: str
    batch: int
    rpcs: int
    concurrent: int


def loads(scale: float) -> list[Load]:
    def n(count: int) -> int:
        return max(10, int(count * scale))

    return [
        Load("unary", "unary", 1, n(20_000), 32),
        Load("batch 100", "batch", 100, n(4_000), 8),
        Load("batch 1000", "batch", 1000, n(600), 4),
        Load("stream 100", "stream", 100, n(4_000), 4),
    ]


def _pin(pid: int, cpu: int) -> None:
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        _pin(self.process.pid, SERVER_CPU)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        time.sleep(1.0)  # settle before reading the idle RSS
        self.idle_rss_mb = memory_mb(self.process.pid, "VmRSS")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def drive(port: int, load: Load, rate: float = 0.0, rpcs: int | None = None) -> dict[str, Any]:
    command = [
        sys.executable,
        str(HERE / "load_driver.py"),
        "--server",
        f"127.0.0.1:{port}",
        "--shape",
        load.shape,
        "--batch",
        str(load.batch),
        "--rpcs",
        str(rpcs or load.rpcs),
        "--concurrent",
        str(load.concurrent),
        "--rate",
        str(rate),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=_env())
    _pin(process.pid, DRIVER_CPU)
    output, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"load driver failed for {load.name}")
    result: dict[str, Any] = orjson.loads(output)
    return result


def measure(server: Server, load: Load) -> dict[str, Any]:
    before = cpu_seconds(server.process.pid)
    result = drive(server.port, load)
    used = cpu_seconds(server.process.pid) - before
    result["cpu_s_per_million"] = used / result["events"] * 1e6
    result["peak_rss_mb"] = memory_mb(server.process.pid, "VmHWM")
    return result


def measure_every_load(server: Server, shapes: list[Load]) -> dict[str, dict[str, Any]]:
    """A short warm-up, then every load in turn."""
    drive(server.port, shapes[1], rpcs=200)
    return {load.name: measure(server, load) for load in shapes}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEP_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent.parent / "service"), env.get("PYTHONPATH")])
    )
    env.update(extra)
    return env


def start_ours(data: Path, file_format: str, ablation: str | None = None) -> Server:
    """Our server on the file store in `file_format`, default settings otherwise.

    With `ablation`, ablated_server.py: ours with that part of the work taken out.
    """
    port = free_port()
    env = _env(
        AEP_SERVER_HOST="127.0.0.1",
        AEP_SERVER_PORT=str(port),
        AEP_METRICS_HOST="127.0.0.1",
        AEP_METRICS_PORT=str(free_port()),
        AEP_DATABASE_FILE_DIR=str(data / "events"),
        AEP_DEAD_LETTER_DIR=str(data / "dead-letter"),
        AEP_LOGGING_LEVEL="warning",
    )
    env["AEP_DATABASE_FILE_FORMAT"] = file_format
    if ablation is None:
        return Server(f"ours ({file_format})", [sys.executable, "-m", "aep"], env, port)
    command = [sys.executable, str(HERE / "ablated_server.py"), ablation]
    return Server(f"ours: {ablation}", command, env, port)


def start_baseline(work: str = "count") -> Server:
    port = free_port()
    command = [sys.executable, str(HERE / "baseline_server.py"), "--port", str(port)]
    return Server("baseline", [*command, "--work", work], _env(), port)


# The baseline again, its handlers doing the least per-event Python any
# ingest service must do (see baseline_server.py): where pure Python's floor is.
FLOORS = {"floor: read": "read", "floor: record": "record"}
# Ours (JSON Lines) with part of its work taken out (see ablated_server.py):
# what the server shell costs, and what everything after validation costs.
ABLATIONS = ("shell", "no-validation")


@dataclass
class OverloadResult:
    rss_start_mb: float
    rss_peak_mb: float
    rss_end_mb: float
    accepted_events: int
    refused_rpcs: int
    seconds: float


def overload(server: Server, seconds: float, sustainable: float) -> OverloadResult:
    """Batch-100 requests offered at twice the `sustainable` events/s for `seconds`.

    Paced (open loop) from 512 callers, so the offered rate does not drop to
    what the server answers, as a closed loop's would.
    """
    start = memory_mb(server.process.pid, "VmRSS")
    peak = start
    accepted = refused = 0
    offered = 2 * sustainable
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        rpcs = int(offered * 5 / 100)  # ~5 s per driver run
        load = Load("overload", "batch", 100, rpcs, 512)
        result = drive(server.port, load, rate=offered)
        accepted += int(result["events"])
        refused += sum(result["errors"].values())
        peak = max(peak, memory_mb(server.process.pid, "VmRSS"))
    end = memory_mb(server.process.pid, "VmRSS")
    return OverloadResult(start, peak, end, accepted, refused, time.monotonic() - started)


def print_table(shapes: list[Load], results: dict[str, dict[str, dict[str, Any]]]) -> None:
    columns = ("load", "server", "events/s", "p50 ms", "p99 ms", "CPU s/M", "peak RSS MB", "ratio")
    header = "{:<11} {:<20} {:>10} {:>8} {:>8} {:>8} {:>12} {:>6}".format(*columns)
    print(header)
    print("-" * len(header))
    baselines = [name for name in results if name.startswith("baseline")]
    for load in shapes:
        base = sum(results[name][load.name]["events_per_s"] for name in baselines) / len(baselines)
        for name in [*baselines, *(name for name in results if name not in baselines)]:
            r = results[name][load.name]
            ratio = f"{r['events_per_s'] / base:.2f}" if name not in baselines else ""
            print(
                f"{load.name:<11} {name:<20} {r['events_per_s']:>10,.0f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {r['cpu_s_per_million']:>8.2f} {r['peak_rss_mb']:>12.1f} "
                f"{ratio:>6}"
            )
    print(
        "(ratio = events/s / the mean of the two baseline runs, at the start and at the end;"
        " CPU s/M = server CPU seconds per million events)"
    )


@dataclass
class OursRun:
    results: dict[str, dict[str, Any]]
    idle_rss_mb: float
    paced: dict[str, Any]
    overload: OverloadResult | None
    exit_code: int
    acknowledged: int
    stored: int


def run_ours(scratch: Path, file_format: str, shapes: list[Load], overload_s: float) -> OursRun:
    data = scratch / file_format
    server = start_ours(data, file_format)
    acknowledged = int(drive(server.port, shapes[1], rpcs=200)["events"])  # warm-up
    results = {load.name: measure(server, load) for load in shapes}
    half = results["batch 100"]["events_per_s"] / 2
    paced = drive(server.port, shapes[1], rate=half, rpcs=int(half * 10 / 100))
    loaded = overload(server, overload_s, 2 * half) if overload_s else None
    exit_code = server.stop()
    acknowledged += int(sum(r["events"] for r in results.values()) + paced["events"])
    acknowledged += loaded.accepted_events if loaded else 0
    stored = len(stored_events(data / "events"))
    return OursRun(results, server.idle_rss_mb, paced, loaded, exit_code, acknowledged, stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every load's count")
    parser.add_argument(
        "--overload-seconds",
        type=float,
        default=0.0,
        help="then drive ours far past its maximum this long and watch RSS (e.g. 60)",
    )
    parser.add_argument(
        "--formats", default="jsonl,protobuf", help="file store formats to measure (jsonl,protobuf)"
    )
    parser.add_argument(
        "--no-ablations",
        dest="ablations",
        action="store_false",
        help="skip ours with part of its work taken out (no-op handlers / no validation)",
    )
    parser.add_argument(
        "--no-floors",
        dest="floors",
        action="store_false",
        help="skip the baseline variants that read every field / build the stored form",
    )
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; server pinned to "
        f"CPU {SERVER_CPU}, load driver to CPU {DRIVER_CPU}; scale {args.scale}"
    )
    shapes = loads(args.scale)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    runs: dict[str, OursRun] = {}
    with tempfile.TemporaryDirectory(prefix="aep-bench-") as scratch:
        baseline = start_baseline()
        results["baseline"] = measure_every_load(baseline, shapes)
        baseline.stop()
        if args.floors:
            for name, work in FLOORS.items():
                floor = start_baseline(work)
                results[name] = measure_every_load(floor, shapes)
                floor.stop()
        for file_format in args.formats.split(","):
            run = run_ours(Path(scratch), file_format, shapes, args.overload_seconds)
            runs[file_format] = run
            results[f"ours ({file_format})"] = run.results
        if args.ablations:
            for ablation in ABLATIONS:
                ablated = start_ours(Path(scratch) / ablation, "jsonl", ablation)
                results[f"ours: {ablation}"] = measure_every_load(ablated, shapes)
                if ablated.stop() != 0:
                    print(f"ours: {ablation} exited with an error", file=sys.stderr)
                    sys.exit(1)
        # The baseline again, last: the machine's drift during the run shows
        # as the difference between its two rows.
        baseline_end = start_baseline()
        results["baseline (end)"] = measure_every_load(baseline_end, shapes)
        baseline_end.stop()
    print()
    print_table(shapes, results)
    print()
    print(f"idle RSS: baseline {baseline.idle_rss_mb:.1f} MB")
    failed = False
    for file_format, run in runs.items():
        print(
            f"ours ({file_format}): idle RSS {run.idle_rss_mb:.1f} MB; p99 at half its batch-100 "
            f"maximum ({run.paced['events_per_s']:,.0f} events/s, paced) "
            f"{run.paced['p99_ms']:.2f} ms (p50 {run.paced['p50_ms']:.2f} ms)"
        )
        if run.overload:
            o = run.overload
            print(
                f"  twice the batch-100 maximum offered for {args.overload_seconds:.0f}s: "
                f"RSS {o.rss_start_mb:.1f} MB at the "
                f"start, {o.rss_peak_mb:.1f} MB peak, {o.rss_end_mb:.1f} MB at the end; "
                f"{o.accepted_events / o.seconds:,.0f} events/s accepted, "
                f"{o.refused_rpcs} RPCs refused (RESOURCE_EXHAUSTED)"
            )
        verdict = "all stored" if run.stored == run.acknowledged else "MISMATCH"
        print(
            f"  exit code {run.exit_code}; events acknowledged {run.acknowledged}, "
            f"stored {run.stored} ({verdict})"
        )
        failed |= run.exit_code != 0 or run.stored != run.acknowledged
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
