"""The file store's dedupe at a steady 500,000 recent ids, on either table.

    .venv/bin/python tests/benchmarks/bench_dedupe.py [--rounds N] [--ids N]

Batches of 2,000 events (two 1,000-event blocks from the native codec, server
ids) are claimed and confirmed by RecentIds until it holds --ids ids, then for
--rounds rounds of 100 batches more: each claim looks up and adds 2,000 ids and
each confirm evicts the oldest batch's 2,000. Rows: the native IdSet (keys read
out of the blocks' JSON Lines, NativeIdTable) and CPython's set of the ids as
str (SetIdTable, which first reads the ids out of the lines: the str the codec
made per event before 2026-12-06). Prints CPU ns per event (process time, the
best round and the median) and the RSS each remembered id costs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from aep.events.block import EventBatch
from aep.events.codec import RequestKind
from aep.events.codec.native import NativeCodec
from aep.events.schema import format_epoch
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings
from aep.storage.file import IdTable, NativeIdTable, RecentIds, SetIdTable

BATCH_EVENTS = 2_000
BATCHES_PER_ROUND = 100


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def request(now: float) -> bytes:
    events = []
    for n in range(BATCH_EVENTS // 2):
        event = pb.AdEvent(
            user_id=f"user-{n % 977}", ad_id=f"ad-{n % 131}", event_type=pb.EventType.ValueType(1)
        )
        event.timestamp.FromNanoseconds(int((now - 1) * 1e9))
        events.append(event)
    return pb.SendAdEventBatchRequest(events=events).SerializeToString()


def run(table: IdTable, max_ids: int, rounds: int) -> tuple[list[float], float]:
    """CPU ns per event of claim + confirm, per round; RSS per remembered id."""
    codec = NativeCodec(ValidationSettings(), BATCH_EVENTS // 2, records=False)
    now = time.time()
    raw = request(now)
    received_at = format_epoch(now)

    def next_batch() -> EventBatch:
        blocks = [codec.decode(RequestKind.BATCH, raw, now, received_at).block() for _ in "ab"]
        return EventBatch(blocks)

    recent = RecentIds(window=3600.0, max_ids=max_ids, table=table)
    gc.collect()
    before = rss_bytes()
    while len(recent) < max_ids:
        claim = recent.claim_if_new(next_batch())
        assert claim is not None
        recent.confirm(claim, now)
    gc.collect()
    per_id = (rss_bytes() - before) / len(recent)
    figures = []
    for _ in range(rounds):
        batches = [next_batch() for _ in range(BATCHES_PER_ROUND)]
        started = time.process_time()
        for batch in batches:
            claim = recent.claim_if_new(batch)
            assert claim is not None
            recent.confirm(claim, now)
        used = time.process_time() - started
        figures.append(used / (BATCHES_PER_ROUND * BATCH_EVENTS) * 1e9)
        del batches
    return figures, per_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 100 batches")
    parser.add_argument("--ids", type=int, default=500_000, help="recent ids held (the default)")
    args = parser.parse_args()
    tables: dict[str, Callable[[], IdTable]] = {
        "native IdSet (lines)": lambda: NativeIdTable(args.ids),
        "set of str": SetIdTable,
    }
    print(f"{'table':>22}  {'best ns/event':>13}  {'median':>7}  {'RSS per id':>10}")
    results = {}
    for name, make in tables.items():
        figures, per_id = run(make(), args.ids, args.rounds)
        results[name] = min(figures)
        print(
            f"{name:>22}  {min(figures):>13.0f}  {statistics.median(figures):>7.0f}  "
            f"{per_id:>8.0f} B"
        )
        gc.collect()
    native, plain = results["native IdSet (lines)"], results["set of str"]
    print(f"set / IdSet: {plain / native:.2f}x (claim + eviction per event, best rounds)")


if __name__ == "__main__":
    main()
