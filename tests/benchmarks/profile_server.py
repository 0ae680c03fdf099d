"""`make profile`: where our server's CPU goes under one load, grouped by what it was doing.

    .venv/bin/python tests/benchmarks/profile_server.py [--load "batch 1000"] [--scale 2]

Starts ours as `make bench` does (JSON Lines file store, native codec, default
settings, pinned to CPU 0), warms it up, records it with `perf record -g` while
the load driver (CPU 1) sends one of bench_ingest's loads, then groups every
sample by the first rule its stack matches (GROUPS: the native pass, the
dedupe's IdSet, fsync, the file write, wakeups between threads, socket
sends and receives, the scheduler), else by the library it was in (gRPC's C core, CPython, libc, the
kernel). Prints each group's share of the samples, and the server CPU µs per
event of the run. perf's own overhead makes the run dearer than `make bench`'s:
read shares, not µs. Needs `perf` (Debian: apt-get install linux-perf) and the
right to trace the server (root). Bounded like every load of make bench.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: tests.benchmarks, tests.helpers
from tests.benchmarks import bench_ingest  # noqa: E402

# (group, substrings of frames): a sample counts for the first group one of its frames matches.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("the native pass", ("aep_decode", "Codec_decode", "process_event", "json_string")),
    (
        "dedupe (IdSet)",
        ("IdSet_", "keys_of_", "find_slot", "discard_key", "add_at", "add_all", "pack_of"),
    ),
    ("fsync", ("__x64_sys_fsync", "do_fsync", "ext4_sync_file")),
    # The store's writev into the page cache (not write(2) on an eventfd or a socket).
    ("the file write", ("do_writev", "generic_perform_write")),
    # gRPC's eventfd and asyncio's self-pipe (a socketpair): one thread waking another.
    ("wakeups (eventfd, self-pipe)", ("eventfd_", "unix_stream_")),
    ("socket send", ("tcp_sendmsg", "sendmsg")),
    ("socket receive", ("tcp_recvmsg", "recvmsg", "recvfrom")),
    ("the scheduler: context switches", ("finish_task_switch", "__schedule", "futex")),
    ("page faults", ("exc_page_fault",)),
]
# By the library of the sample's own frame, when no group matched.
LIBRARIES: list[tuple[str, str]] = [
    ("_native.", "the native pass"),
    ("cygrpc", "gRPC's C core"),
    ("libpython", "CPython: interpreter, objects, GIL"),
    ("libc.so", "libc: malloc, memcpy"),
    ("kernel", "other kernel"),
]


def group_samples(perf_script: str) -> collections.Counter[str]:
    """Samples per group, from `perf script -F tid,ip,sym,dso` output (blank-line separated)."""
    counts: collections.Counter[str] = collections.Counter()
    for sample in perf_script.split("\n\n"):
        lines = [line.strip() for line in sample.strip().splitlines()]
        if not lines:
            continue
        frames = lines[1:]  # the first line names the thread
        stack = " ".join(frames)
        for group, needles in GROUPS:
            if any(needle in stack for needle in needles):
                counts[group] += 1
                break
        else:
            own = frames[0] if frames else ""
            counts[next((group for lib, group in LIBRARIES if lib in own), "other")] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [load.name for load in bench_ingest.loads(1.0)]
    parser.add_argument("--load", default="batch 1000", choices=names, help="the load to profile")
    parser.add_argument("--scale", type=float, default=2.0, help="multiply the load's count")
    parser.add_argument("--frequency", type=int, default=1999, help="perf samples per second")
    args = parser.parse_args()
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("profile_server: needs perf (Debian: apt-get install linux-perf)")
    shapes = bench_ingest.loads(args.scale)
    load = next(shape for shape in shapes if shape.name == args.load)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "perf.data"
        server = bench_ingest.start_ours(Path(scratch), "jsonl", codec="native")
        try:
            bench_ingest.warm_up(server, shapes)
            record = [perf, "record", "-g", "-F", str(args.frequency), "-o", str(data)]
            recorder = subprocess.Popen(
                [*record, "-p", str(server.process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)  # attached before the load starts
            measured = bench_ingest.measure(server, load)
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=60)
        finally:
            server.stop()
        script = subprocess.run(
            [perf, "script", "-i", str(data), "-F", "tid,ip,sym,dso"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    counts = group_samples(script)
    total = sum(counts.values())
    print(
        f"ours (jsonl, native), {load.name}: {measured['cpu_us_per_event']:.2f} server CPU µs "
        f"per event under perf, {total} samples at {args.frequency} Hz"
    )
    for group, count in counts.most_common():
        print(f"  {count / total:6.1%}  {group}")


if __name__ == "__main__":
    main()
