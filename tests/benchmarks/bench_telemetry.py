"""`make bench-telemetry`: what telemetry costs, measured in one run.

Runs the real server (file store) with telemetry off (metrics.enabled=false,
no tracing), on (the default: metrics, no tracing) and, unless
--no-tracing, on with tracing to a local OTLP sink (every span sampled and
exported over gRPC), each on CPU 0, and drives it with the pre-serialised
load of load_driver.py from CPU 1: unary SendAdEvent and SendAdEventBatch of
100. While a server runs, GET /metrics is scraped every second (15x more
often than Prometheus' default). Variants take turns in every repeat, so
drift in the machine's load hits all of them alike. Prints events/s and
server CPU seconds per million events per variant (median, min-max over the
repeats) and the cost of each variant relative to "off". With --baseline DIR
another build joins as variant "baseline" (its default settings), e.g. the
service before a change:
    git archive main service | tar -x -C /tmp/main-src
    bench_telemetry.py --baseline /tmp/main-src/service
127.0.0.1 only; every load is bounded in count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: tests.helpers
from tests.benchmarks.bench_ingest import (  # noqa: E402
    DRIVER_CPU,
    Load,
    Server,
    _env,
    _pin,
    cpu_seconds,
    drive,
)
from tests.helpers.support import free_port  # noqa: E402

VARIANTS = {
    "off": {"AEP_METRICS_ENABLED": "false"},
    "on": {},
    "on+traces": {"OTEL_TRACES_SAMPLER": "always_on"},  # + OTEL_EXPORTER_OTLP_ENDPOINT
    "baseline": {},  # another source tree (--baseline), its defaults
}


def loads(scale: float) -> list[Load]:
    def n(count: int) -> int:
        return max(10, int(count * scale))

    return [
        Load("unary", "unary", 1, n(20_000), 32),
        Load("batch 100", "batch", 100, n(3_000), 8),
    ]


@contextmanager
def otlp_sink() -> Iterator[tuple[str, list[int]]]:
    """A gRPC OTLP trace receiver that counts spans and drops them."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = [0]

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self, request: Any, context: Any
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            received[0] += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        Sink(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(1)


def start(
    variant: str, data: Path, otlp_endpoint: str, baseline: Path | None
) -> tuple[Server, int]:
    port, metrics_port = free_port(), free_port()
    env = _env(
        AEP_SERVER_HOST="127.0.0.1",
        AEP_SERVER_PORT=str(port),
        AEP_METRICS_HOST="127.0.0.1",
        AEP_METRICS_PORT=str(metrics_port),
        AEP_DATABASE_FILE_DIR=str(data / "events"),
        AEP_DEAD_LETTER_DIR=str(data / "dead-letter"),
        AEP_LOGGING_LEVEL="warning",
        **VARIANTS[variant],
    )
    for name in list(env):
        if name.startswith("OTEL_") and name not in VARIANTS[variant]:
            del env[name]
    if variant == "on+traces":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
        env["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    if variant == "baseline":
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline)
    return Server(variant, [sys.executable, "-m", "aep"], env, port), metrics_port


@contextmanager
def scraping(metrics_port: int) -> Iterator[list[int]]:
    """GET /metrics every second; yields [scrapes, bytes of the last one]."""
    stop = threading.Event()
    counts = [0, 0]

    def run() -> None:
        while not stop.wait(1.0):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                ) as response:
                    counts[1] = len(response.read())
            except urllib.error.HTTPError as error:  # 404 with metrics off
                error.close()
            except OSError:
                continue
            counts[0] += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join()


def run_variant(
    variant: str, shapes: list[Load], scratch: Path, otlp_endpoint: str, baseline: Path | None
) -> dict[str, dict[str, float]]:
    data = scratch / f"{variant}-{os.urandom(4).hex()}"
    server, metrics_port = start(variant, data, otlp_endpoint, baseline)
    results: dict[str, dict[str, float]] = {}
    try:
        drive(server.port, shapes[1], rpcs=200)  # warm-up
        with scraping(metrics_port):
            for load in shapes:
                before = cpu_seconds(server.process.pid)
                result = drive(server.port, load)
                used = cpu_seconds(server.process.pid) - before
                results[load.name] = {
                    "events_per_s": result["events_per_s"],
                    "cpu_s_per_million": used / result["events"] * 1e6,
                    "p99_ms": result["p99_ms"],
                }
    finally:
        exit_code = server.stop()
    if exit_code != 0:
        raise RuntimeError(f"{variant}: server exited with {exit_code}")
    return results


def spread(values: list[float], digits: int = 0) -> str:
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:>10,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every load's count")
    parser.add_argument("--no-tracing", action="store_true", help="skip the on+traces variant")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a `service` folder of another build (e.g. main) to run as variant 'baseline'",
    )
    args = parser.parse_args()
    _pin(os.getpid(), DRIVER_CPU)  # the OTLP sink runs here, off the server's CPU
    variants = ["off", "on"] + ([] if args.no_tracing else ["on+traces"])
    variants += ["baseline"] if args.baseline else []
    shapes = loads(args.scale)
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; server on CPU 0, "
        f"load driver on CPU {DRIVER_CPU}; {args.repeats} repeats; scale {args.scale}; "
        "/metrics scraped every 1s"
    )
    runs: dict[str, list[dict[str, dict[str, float]]]] = {v: [] for v in variants}
    with (
        tempfile.TemporaryDirectory(prefix="aep-bench-telemetry-") as scratch,
        otlp_sink() as (
            endpoint,
            spans,
        ),
    ):
        for repeat in range(args.repeats):
            order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
            for variant in order:
                runs[variant].append(
                    run_variant(variant, shapes, Path(scratch), endpoint, args.baseline)
                )
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        exported_spans = spans[0]
    print()
    header = (
        f"{'load':<10} {'telemetry':<10} {'events/s median (min-max)':>32} "
        f"{'CPU s/M median (min-max)':>30}"
    )
    print(header)
    print("-" * len(header))
    for load in shapes:
        for variant in variants:
            rates = [r[load.name]["events_per_s"] for r in runs[variant]]
            cpu = [r[load.name]["cpu_s_per_million"] for r in runs[variant]]
            print(f"{load.name:<10} {variant:<10} {spread(rates):>32} {spread(cpu, 1):>30}")
    print()
    print("cost relative to off (median; min-max of the per-repeat differences):")
    for load in shapes:
        for variant in variants[1:]:
            paired_rate = [
                1 - on[load.name]["events_per_s"] / off[load.name]["events_per_s"]
                for on, off in zip(runs[variant], runs["off"], strict=True)
            ]
            paired_cpu = [
                on[load.name]["cpu_s_per_million"] / off[load.name]["cpu_s_per_million"] - 1
                for on, off in zip(runs[variant], runs["off"], strict=True)
            ]
            print(
                f"  {load.name:<10} {variant:<10} throughput "
                f"{statistics.median(paired_rate):+7.1%} ({min(paired_rate):+.1%} to "
                f"{max(paired_rate):+.1%}) lower; CPU per event "
                f"{statistics.median(paired_cpu):+7.1%} ({min(paired_cpu):+.1%} to "
                f"{max(paired_cpu):+.1%})"
            )
    if "on+traces" in variants:
        print(f"spans received by the OTLP sink: {exported_spans:,}")


if __name__ == "__main__":
    main()
