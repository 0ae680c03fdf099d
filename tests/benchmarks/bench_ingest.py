"""`make bench`: ours against the bare-gRPC limit and the Go design, on this machine, in one run.

Starts a bare grpc.aio baseline server (same proto, handlers only count), a Go
server in the shape of the Go reference design (go_peer/: grpc-go, a channel
of 10,000 events, 5 writer goroutines appending JSON Lines), and
ad-event-processor on the file store, once per file format (JSON Lines,
protobuf files) and codec (native, python), each pinned to CPU 0, and drives
them all with the same pre-serialised load from a driver pinned to CPU 1:
unary, batches of 100, batches of 1000, a stream of 100-event chunks. Prints,
per server and load: events/s, p50/p99 latency, server CPU µs per event, peak
RSS and events/s against the baseline; then ours' CPU efficiency against the
baseline and against Go per load, batch-1000 events per server CPU second,
whether stream 100 costs no more than batch 100, p99 at half ours' batch-100
maximum, idle RSS, (with --overload-seconds) RSS under twice the sustainable
load, and the performance targets met and missed. The baseline runs again at
the end; ratios are to the mean of its two runs. --json writes every figure.
Unless --no-floors, two variants of the baseline run the same loads with
handlers that read every field of every event, or also build and encode the
stored form: the most any pure-Python ingest service could reach.
Unless --no-ablations, ours (JSON Lines) runs them again twice with part of
its work taken out (see ablated_server.py): its handlers answering without
doing anything (the server shell), and without validation (the path after it).
Unless --no-go, the Go server is built (go_peer/build.sh) when missing or older
than its sources; when it cannot be built the run goes on without it, saying so.
Everything talks to 127.0.0.1 only; every load is bounded in count.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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

GO_PEER_SOURCES = HERE / "go_peer"
GO_PEER_ROOT = Path(os.environ.get("GOPEER_ROOT", "/tmp/gopeer"))
GO_PEER_BINARY = GO_PEER_ROOT / "bin" / "gopeer"
GO_SERVER = "go (seed)"

BASELINES = ("baseline", "baseline (end)")
QUICK_SCALE = 0.1  # --quick: every CPU figure still spans several clock ticks


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


def _pinned(command: list[str], cpu: int) -> list[str]:
    """`command` started on `cpu` only, from its first instruction.

    Pinning after the start would race with the Go runtime, which sizes
    GOMAXPROCS from the CPU mask it finds when it starts.
    """
    if len(os.sched_getaffinity(0)) > 1 and shutil.which("taskset"):
        return ["taskset", "--cpu-list", str(cpu), *command]
    return command


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        port: int,
        stderr_path: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        if stderr_path is None:
            self.process = subprocess.Popen(
                _pinned(command, SERVER_CPU), env=env, stdout=subprocess.DEVNULL
            )
        else:
            with stderr_path.open("wb") as stderr:
                self.process = subprocess.Popen(
                    _pinned(command, SERVER_CPU), env=env, stdout=subprocess.DEVNULL, stderr=stderr
                )
        _pin(self.process.pid, SERVER_CPU)  # without taskset: as soon as it runs
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
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
    process = subprocess.Popen(_pinned(command, DRIVER_CPU), stdout=subprocess.PIPE, env=_env())
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
    result["cpu_seconds"] = used
    # CPU seconds per million events and CPU µs per event: the same number.
    result["cpu_s_per_million"] = result["cpu_us_per_event"] = used / result["events"] * 1e6
    result["events_per_cpu_second"] = result["events"] / used if used else None
    result["peak_rss_mb"] = memory_mb(server.process.pid, "VmHWM")
    return result


def warm_up(server: Server, shapes: list[Load]) -> int:
    """A short batch-100 load before measuring; the events it got acknowledged."""
    return int(drive(server.port, shapes[1], rpcs=200)["events"])


def measure_every_load(server: Server, shapes: list[Load]) -> dict[str, dict[str, Any]]:
    """A short warm-up, then every load in turn."""
    warm_up(server, shapes)
    return {load.name: measure(server, load) for load in shapes}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEP_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent.parent / "service"), env.get("PYTHONPATH")])
    )
    env.update(extra)
    return env


def ours_name(file_format: str, codec: str) -> str:
    return f"ours ({file_format}, {codec})"


def start_ours(
    data: Path, file_format: str, ablation: str | None = None, codec: str | None = None
) -> Server:
    """Our server on the file store in `file_format`, default settings otherwise.

    With `codec`, server.codec set to it (native, python); else its default.
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
    if codec is not None:
        env["AEP_SERVER_CODEC"] = codec
    if ablation is None:
        name = ours_name(file_format, codec) if codec else f"ours ({file_format})"
        return Server(name, [sys.executable, "-m", "aep"], env, port)
    command = [sys.executable, str(HERE / "ablated_server.py"), ablation]
    return Server(f"ours: {ablation}", command, env, port)


def start_baseline(work: str = "count") -> Server:
    port = free_port()
    command = [sys.executable, str(HERE / "baseline_server.py"), "--port", str(port)]
    return Server("baseline", [*command, "--work", work], _env(), port)


def go_peer_binary() -> tuple[Path | None, str]:
    """The Go server, built first when missing or older than its sources.

    Returns (the binary, "") or (None, why it could not be built).
    """
    code = {".go", ".proto", ".sh"}
    sources = [path for path in GO_PEER_SOURCES.rglob("*") if path.suffix in code]
    newest = max(path.stat().st_mtime for path in sources)
    if GO_PEER_BINARY.exists() and GO_PEER_BINARY.stat().st_mtime >= newest:
        return GO_PEER_BINARY, ""
    print(f"building the Go server ({GO_PEER_SOURCES / 'build.sh'}) ...", flush=True)
    try:
        built = subprocess.run(
            ["bash", str(GO_PEER_SOURCES / "build.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "go_peer/build.sh did not finish within 15 minutes"
    if built.returncode != 0 or not GO_PEER_BINARY.exists():
        last_lines = (built.stdout + built.stderr).strip().splitlines()[-3:]
        return None, (
            f"go_peer/build.sh failed (exit {built.returncode}; it needs Debian's golang-go and "
            f"grpc-go packages, installed with apt as root): " + " | ".join(last_lines)
        )
    return GO_PEER_BINARY, ""


def start_go(binary: Path, data: Path, stderr_path: Path) -> Server:
    """The Go design (-mode=seed) on one core, as the Python servers have.

    GOMAXPROCS=1 says so explicitly; the Go runtime would also take 1 from the
    CPU mask taskset gives it.
    """
    port = free_port()
    command = [str(binary), "-mode=seed", f"-addr=127.0.0.1:{port}", f"-dir={data}"]
    env = _env(GOMAXPROCS="1")
    return Server(GO_SERVER, command, env, port, stderr_path=stderr_path)


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


@dataclass
class ServerRun:
    """One server's figures: every load, and for ours and Go what it stored."""

    name: str
    kind: str  # baseline, floor, go, ours, ablation
    results: dict[str, dict[str, Any]]
    idle_rss_mb: float
    exit_code: int
    file_format: str | None = None
    codec: str | None = None
    paced: dict[str, Any] | None = None
    overload: OverloadResult | None = None
    acknowledged: int | None = None
    stored: int | None = None
    notes: list[str] = field(default_factory=list)


def run_simple(server: Server, kind: str, shapes: list[Load]) -> ServerRun:
    results = measure_every_load(server, shapes)
    return ServerRun(server.name, kind, results, server.idle_rss_mb, server.stop())


def run_ours(
    scratch: Path,
    file_format: str,
    codec: str,
    shapes: list[Load],
    paced_s: float,
    overload_s: float,
) -> ServerRun:
    data = scratch / f"{file_format}-{codec}"
    server = start_ours(data, file_format, codec=codec)
    acknowledged = warm_up(server, shapes)
    results = {load.name: measure(server, load) for load in shapes}
    half = results["batch 100"]["events_per_s"] / 2
    paced = drive(server.port, shapes[1], rate=half, rpcs=max(10, int(half * paced_s / 100)))
    loaded = overload(server, overload_s, 2 * half) if overload_s else None
    exit_code = server.stop()
    acknowledged += int(sum(r["events"] for r in results.values()) + paced["events"])
    acknowledged += loaded.accepted_events if loaded else 0
    stored = len(stored_events(data / "events"))
    return ServerRun(
        server.name,
        "ours",
        results,
        server.idle_rss_mb,
        exit_code,
        file_format=file_format,
        codec=codec,
        paced=paced,
        overload=loaded,
        acknowledged=acknowledged,
        stored=stored,
    )


def run_go(binary: Path, scratch: Path, shapes: list[Load]) -> ServerRun:
    data = scratch / "go"
    log = scratch / "go.log"
    server = start_go(binary, data, log)
    acknowledged = warm_up(server, shapes)
    results = {load.name: measure(server, load) for load in shapes}
    exit_code = server.stop()
    acknowledged += int(sum(r["events"] for r in results.values()))
    stored = sum(len(path.read_bytes().splitlines()) for path in data.glob("*.jsonl"))
    run = ServerRun(
        server.name, "go", results, server.idle_rss_mb, exit_code, acknowledged=acknowledged
    )
    run.stored = stored
    found = re.search(r"GOMAXPROCS=(\d+)", log.read_text(errors="replace"))
    run.notes.append(f"GOMAXPROCS={found[1] if found else '?'}")
    return run


# ---------------------------------------------------------------- figures


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def bare_means(runs: dict[str, ServerRun], shapes: list[Load]) -> dict[str, dict[str, float]]:
    """Per load, the mean of the baseline's two runs (start and end)."""
    baselines = [runs[name] for name in BASELINES if name in runs]
    return {
        load.name: {
            key: mean([run.results[load.name][key] for run in baselines])
            for key in ("events_per_s", "cpu_us_per_event")
        }
        for load in shapes
    }


def cpu_efficiency(
    runs: dict[str, ServerRun], shapes: list[Load], bare: dict[str, dict[str, float]]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per ours run and load: the bare baseline's (and Go's) CPU per event / ours'.

    Efficiency is 1 / CPU per event, so a ratio of 0.5 means ours spends twice
    the CPU per event that the other server spends.
    """
    go = runs.get(GO_SERVER)
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, run in runs.items():
        if run.kind != "ours":
            continue
        table[name] = {}
        for load in shapes:
            ours_cpu = run.results[load.name]["cpu_us_per_event"]
            go_cpu = go.results[load.name]["cpu_us_per_event"] if go else None
            table[name][load.name] = {
                "vs_bare": bare[load.name]["cpu_us_per_event"] / ours_cpu if ours_cpu else None,
                "vs_go": go_cpu / ours_cpu if go_cpu is not None and ours_cpu else None,
            }
    return table


@dataclass
class Target:
    description: str
    server: str
    value: float | None
    shown: str
    met: bool | None  # None: not measured in this run


def targets(
    runs: dict[str, ServerRun],
    efficiency: dict[str, dict[str, dict[str, float | None]]],
) -> list[Target]:
    """Issue #16's targets, for every ours run (the native codec's are the ones that count)."""
    found: list[Target] = []
    for name, run in runs.items():
        if run.kind != "ours":
            continue
        per_load = efficiency[name]
        for description, load, against, at_least in (
            ("unary CPU efficiency >= 0.85x bare", "unary", "vs_bare", 0.85),
            ("batch 100 CPU efficiency >= 0.6x bare", "batch 100", "vs_bare", 0.6),
            ("batch 100 CPU efficiency >= 0.4x Go", "batch 100", "vs_go", 0.4),
        ):
            value = per_load[load][against]
            if value is None:
                found.append(Target(description, name, None, "n/a (no Go run)", None))
            else:
                found.append(Target(description, name, value, f"{value:.2f}x", value >= at_least))
        per_core = run.results["batch 1000"]["events_per_cpu_second"]
        found.append(
            Target(
                "batch 1000 >= 1,000,000 events/s per server core",
                name,
                per_core,
                f"{per_core:,.0f}" if per_core else "n/a",
                per_core >= 1_000_000 if per_core else None,
            )
        )
        stream = run.results["stream 100"]["cpu_us_per_event"]
        batch = run.results["batch 100"]["cpu_us_per_event"]
        found.append(
            Target(
                "stream 100 CPU/event <= batch 100's",
                name,
                stream / batch if batch else None,
                f"{stream:.2f} vs {batch:.2f} us",
                stream <= batch,
            )
        )
        assert run.paced is not None
        p99 = run.paced["p99_ms"]
        found.append(
            Target(
                "p99 < 5 ms at half the batch-100 max",
                name,
                p99,
                f"{p99:.2f} ms",
                p99 < 5.0,
            )
        )
    return found


def print_table(shapes: list[Load], runs: dict[str, ServerRun]) -> None:
    columns = (
        "load",
        "server",
        "events/s",
        "p50 ms",
        "p99 ms",
        "CPU us/ev",
        "peak RSS MB",
        "x bare",
        "failed RPCs",
    )
    header = "{:<11} {:<24} {:>10} {:>8} {:>8} {:>9} {:>11} {:>6} {:>11}".format(*columns)
    print(header)
    print("-" * len(header))
    bare = bare_means(runs, shapes)
    baselines = [name for name in BASELINES if name in runs]
    order = [*baselines, *(name for name in runs if name not in baselines)]
    for load in shapes:
        for name in order:
            r = runs[name].results[load.name]
            ratio = (
                ""
                if name in baselines
                else f"{r['events_per_s'] / bare[load.name]['events_per_s']:.2f}"
            )
            print(
                f"{load.name:<11} {name:<24} {r['events_per_s']:>10,.0f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {r['cpu_us_per_event']:>9.2f} {r['peak_rss_mb']:>11.1f} "
                f"{ratio:>6} {sum(r['errors'].values()) or '':>11}"
            )
    print(
        "(CPU us/ev = server CPU µs per event (= CPU seconds per million events); x bare ="
        " events/s / the mean of the two baseline runs, at the start and at the end;"
        " failed RPCs are not counted as events but their CPU is, so rows with some overstate"
        " CPU per event)"
    )


def print_efficiency(
    shapes: list[Load], efficiency: dict[str, dict[str, dict[str, float | None]]]
) -> None:
    print(
        "CPU efficiency of ours, per load: (bare's or Go's CPU per event) / ours'"
        " (1.00 = as cheap; 0.50 = twice the CPU per event)"
    )
    header = f"{'server':<24}" + "".join(f" {load.name + ' bare / Go':>23}" for load in shapes)
    print(header)
    print("-" * len(header))

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for name, per_load in efficiency.items():
        pairs = [(per_load[load.name]["vs_bare"], per_load[load.name]["vs_go"]) for load in shapes]
        cells = "".join(f" {shown(bare) + ' / ' + shown(go):>23}" for bare, go in pairs)
        print(f"{name:<24}{cells}")


def print_per_core_and_stream(runs: dict[str, ServerRun]) -> None:
    print("per server: batch-1000 events per server CPU second; stream 100 against batch 100")
    header = "{:<24} {:>22} {:>16} {:>16} {:>18}".format(
        "server", "batch 1000 ev/CPU-s", "stream us/ev", "batch 100 us/ev", "stream as cheap"
    )
    print(header)
    print("-" * len(header))
    for name, run in runs.items():
        per_core = run.results["batch 1000"]["events_per_cpu_second"]
        stream = run.results["stream 100"]["cpu_us_per_event"]
        batch = run.results["batch 100"]["cpu_us_per_event"]
        print(
            f"{name:<24} {(f'{per_core:,.0f}' if per_core else 'n/a'):>22} {stream:>16.2f} "
            f"{batch:>16.2f} {('yes' if stream <= batch else 'no'):>18}"
        )


def print_targets(found: list[Target]) -> None:
    servers = list(dict.fromkeys(target.server for target in found))
    descriptions = list(dict.fromkeys(target.description for target in found))
    cells = {(target.description, target.server): target for target in found}
    print("targets (issue #16 item 8; the native codec's columns are the ones that count)")
    header = f"{'target':<50}" + "".join(f" {server:>26}" for server in servers)
    print(header)
    print("-" * len(header))
    for description in descriptions:
        row = f"{description:<50}"
        for server in servers:
            target = cells[(description, server)]
            verdict = {True: "met", False: "MISSED", None: "n/a"}[target.met]
            row += f" {target.shown + ' ' + verdict:>26}"
        print(row)


def as_json(
    args: argparse.Namespace,
    shapes: list[Load],
    runs: dict[str, ServerRun],
    go_status: dict[str, Any],
    efficiency: dict[str, dict[str, dict[str, float | None]]],
    found: list[Target],
    failed: bool,
    scale: float,
    paced_s: float,
    elapsed_s: float,
) -> dict[str, Any]:
    bare = bare_means(runs, shapes)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "server_cpu": SERVER_CPU,
            "driver_cpu": DRIVER_CPU,
            "clock_ticks_per_s": CLOCK_TICKS,
        },
        "arguments": vars(args),
        "scale": scale,
        "paced_seconds": paced_s,
        "elapsed_s": elapsed_s,
        "loads": [dataclasses.asdict(load) for load in shapes],
        "servers": {
            name: {
                "kind": run.kind,
                "file_format": run.file_format,
                "codec": run.codec,
                "idle_rss_mb": run.idle_rss_mb,
                "exit_code": run.exit_code,
                "acknowledged": run.acknowledged,
                "stored": run.stored,
                "notes": run.notes,
                "loads": run.results,
                "paced_half_batch_100": run.paced,
                "overload": dataclasses.asdict(run.overload) if run.overload else None,
            }
            for name, run in runs.items()
        },
        "go": go_status,
        "bare_mean": bare,
        "events_per_s_vs_bare": {
            name: {
                load.name: run.results[load.name]["events_per_s"] / bare[load.name]["events_per_s"]
                for load in shapes
            }
            for name, run in runs.items()
        },
        "cpu_efficiency": efficiency,
        "batch_1000_events_per_cpu_second": {
            name: run.results["batch 1000"]["events_per_cpu_second"] for name, run in runs.items()
        },
        "stream_100_at_least_as_cheap_as_batch_100": {
            name: run.results["stream 100"]["cpu_us_per_event"]
            <= run.results["batch 100"]["cpu_us_per_event"]
            for name, run in runs.items()
        },
        "targets": [dataclasses.asdict(target) for target in found],
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"multiply every load's count (default 1; with --quick {QUICK_SCALE})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run (under 2 minutes): --scale {QUICK_SCALE}, 1 s paced runs;"
        " its figures are rough",
    )
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=None,
        help="length of ours' run paced at half its batch-100 maximum (default 10; --quick 1)",
    )
    parser.add_argument(
        "--overload-seconds",
        type=float,
        default=0.0,
        help="then drive each ours far past its maximum this long and watch RSS (e.g. 60)",
    )
    parser.add_argument(
        "--formats", default="jsonl,protobuf", help="file store formats to measure (jsonl,protobuf)"
    )
    parser.add_argument(
        "--codecs",
        default="native,python",
        help="ours' server.codec values to measure, each with every format (native,python)",
    )
    parser.add_argument(
        "--no-go",
        dest="go",
        action="store_false",
        help="skip the Go server (the reference design's shape, go_peer/)",
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
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    paced_s = (
        args.paced_seconds if args.paced_seconds is not None else (1.0 if args.quick else 10.0)
    )
    formats = [value for value in args.formats.split(",") if value]
    codecs = [value for value in args.codecs.split(",") if value]
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; server pinned to "
        f"CPU {SERVER_CPU}, load driver to CPU {DRIVER_CPU}; scale {scale}"
    )
    go_status: dict[str, Any] = {"ran": False, "skipped": "--no-go", "binary": None}
    binary: Path | None = None
    if args.go:
        binary, why_not = go_peer_binary()
        go_status = {"ran": False, "skipped": why_not or None, "binary": str(binary or "")}
        if binary is None:
            print(f"NOTICE: the Go server is skipped in this run: {why_not}", flush=True)
    shapes = loads(scale)
    runs: dict[str, ServerRun] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aep-bench-") as scratch:
        runs["baseline"] = run_simple(start_baseline(), "baseline", shapes)
        if args.floors:
            for name, work in FLOORS.items():
                floor = run_simple(start_baseline(work), "floor", shapes)
                floor.name = name
                runs[name] = floor
        if binary is not None:
            runs[GO_SERVER] = run_go(binary, Path(scratch), shapes)
            go_status["ran"] = True
            go_status["gomaxprocs"] = runs[GO_SERVER].notes[0].split("=")[1]
        for file_format in formats:
            for codec in codecs:
                run = run_ours(
                    Path(scratch), file_format, codec, shapes, paced_s, args.overload_seconds
                )
                runs[run.name] = run
        if args.ablations:
            for ablation in ABLATIONS:
                ablated = start_ours(Path(scratch) / ablation, "jsonl", ablation)
                runs[ablated.name] = run_simple(ablated, "ablation", shapes)
                if runs[ablated.name].exit_code != 0:
                    print(f"ours: {ablation} exited with an error", file=sys.stderr)
                    sys.exit(1)
        # The baseline again, last: the machine's drift during the run shows
        # as the difference between its two rows.
        end = run_simple(start_baseline(), "baseline", shapes)
        end.name = "baseline (end)"
        runs[end.name] = end
    elapsed = time.monotonic() - started
    bare = bare_means(runs, shapes)
    efficiency = cpu_efficiency(runs, shapes, bare)
    found = targets(runs, efficiency)
    print()
    print_table(shapes, runs)
    print()
    print_efficiency(shapes, efficiency)
    print()
    print_per_core_and_stream(runs)
    print()
    print(f"idle RSS: baseline {runs['baseline'].idle_rss_mb:.1f} MB")
    failed = False
    for name, run in runs.items():
        errors = {load: r["errors"] for load, r in run.results.items() if r["errors"]}
        if errors:
            print(f"{name}: RPCs that failed (not counted as events): {errors}")
        if run.kind == "go":
            verdict = (
                "all written"
                if run.stored == run.acknowledged
                else "MISMATCH: its full queue refused some, so its events/s overstate"
            )
            print(
                f"{name}: idle RSS {run.idle_rss_mb:.1f} MB; {', '.join(run.notes)}; exit code "
                f"{run.exit_code}; events acknowledged {run.acknowledged}, written {run.stored} "
                f"({verdict})"
            )
        if run.kind != "ours":
            continue
        assert run.paced is not None
        print(
            f"{name}: idle RSS {run.idle_rss_mb:.1f} MB; p99 at half its batch-100 "
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
    if not go_status["ran"]:
        print(f"Go server: not run ({go_status['skipped']})")
    print()
    print_targets(found)
    print(f"\n(the run took {elapsed:.0f} s)")
    if args.json:
        document = as_json(
            args, shapes, runs, go_status, efficiency, found, failed, scale, paced_s, elapsed
        )
        args.json.write_bytes(
            orjson.dumps(
                document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
            )
        )
        print(f"figures written to {args.json}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
