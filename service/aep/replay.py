"""`ad-event-processor replay-dlq`: send dead-lettered events to the configured store again.

For each dead-letter file (by default every `dead-letter-*.jsonl` in
`dead_letter.dir`, plus files an earlier run claimed but did not finish):

1. claim it: rename it into `<dir>/replaying/`. A running server appends to a
   new file from then on, and an append that was under way finishes first
   (both sides lock the file), so nothing lands in a file after it was read;
2. read each line's `event` (the stored form as the server built it);
3. write them in batches of `batch.size` with the store's write_batch, retried
   like the server retries (`retry.*`). Stores are idempotent by event_id, so
   events that did reach the store are counted as duplicates, not stored twice
   (within the store's dedupe window: Redis' `dedupe_window`, the file store's
   `dedupe_window`, MongoDB's as long as the document exists);
4. move it to `<dir>/replayed/`, so a second run does not send it again.

A file whose writes still fail stays in `replaying/` for the next run.
Run one replay-dlq at a time. Exit codes: 0 everything replayed (also when
there was nothing to replay); 1 a PATH does not exist, a file could not be
replayed, or a file had lines that are not events (reported by line number;
the file still moves to `replayed/` once its readable events are stored);
3 the store cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import orjson

from aep.deadletter import DEAD_LETTER_PATTERN, lock_claimed
from aep.records import EventRecord
from aep.settings import RetrySettings, Settings
from aep.storage import EventStore, StoreError, WriteResult, create_store

CLAIMED_DIR = "replaying"
REPLAYED_DIR = "replayed"

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_STORE_UNREACHABLE = 3


@dataclass
class FileReport:
    path: Path
    events: int = 0
    written: int = 0
    duplicates: int = 0
    unreadable_lines: list[int] = field(default_factory=list)


def find_dead_letter_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(files, missing paths); a directory stands for its pending and claimed files."""
    files: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted((path / CLAIMED_DIR).glob("*.jsonl")))
            files.extend(sorted(path.glob(DEAD_LETTER_PATTERN)))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def claim(path: Path) -> Path:
    """Rename into replaying/ (unless already there) and wait for appends to finish."""
    if path.parent.name == CLAIMED_DIR:
        claimed = path
    else:
        claimed_dir = path.parent / CLAIMED_DIR
        claimed_dir.mkdir(exist_ok=True)
        # A server may recreate the same name later: keep claims apart.
        claimed = claimed_dir / f"{path.stem}.{secrets.token_hex(3)}.jsonl"
        os.rename(path, claimed)
    fd = os.open(claimed, os.O_RDONLY)
    try:
        lock_claimed(fd)
    finally:
        os.close(fd)
    return claimed


def read_events(path: Path, report: FileReport) -> list[EventRecord]:
    records: list[EventRecord] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)["event"]
                if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                    raise TypeError("no event with an event_id")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                report.unreadable_lines.append(number)
                continue
            records.append(event)
    report.events = len(records)
    return records


async def write_with_retry(
    store: EventStore, batch: Sequence[EventRecord], retry: RetrySettings
) -> WriteResult:
    attempt = 0
    while True:
        attempt += 1
        try:
            return await store.write_batch(batch)
        except StoreError:
            if attempt >= retry.max_attempts:
                raise
        backoff = min(retry.max_backoff, retry.initial_backoff * 2 ** (attempt - 1))
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)


def _move_to_replayed(claimed: Path) -> Path:
    replayed_dir = claimed.parent.parent / REPLAYED_DIR
    replayed_dir.mkdir(exist_ok=True)
    target = replayed_dir / claimed.name
    os.rename(claimed, target)
    return target


async def replay_dead_letters(
    settings: Settings, paths: Iterable[Path], out: TextIO = sys.stdout
) -> int:
    named = list(paths)
    files, missing = find_dead_letter_files(named or [settings.dead_letter.dir])
    if named and missing:
        print(f"replay-dlq: no such file or directory: {missing}", file=sys.stderr)
        return EXIT_INCOMPLETE
    store = create_store(settings.database, worker_count=1)
    try:
        await store.open()
    except StoreError as error:
        print(f"replay-dlq: cannot open the {store.name} store: {error}", file=sys.stderr)
        return EXIT_STORE_UNREACHABLE
    exit_code = EXIT_OK
    totals = FileReport(Path("."))
    replayed_files = 0
    try:
        for path in files:
            claimed = claim(path)
            report = FileReport(claimed)
            records = read_events(claimed, report)
            size = settings.batch.size
            try:
                for offset in range(0, len(records), size):
                    result = await write_with_retry(
                        store, records[offset : offset + size], settings.retry
                    )
                    report.written += result.written
                    report.duplicates += result.duplicates
            except StoreError as error:
                print(
                    f"replay-dlq: {claimed}: store write failed ({error}); the file stays in "
                    f"{claimed.parent} for the next run",
                    file=sys.stderr,
                )
                exit_code = EXIT_INCOMPLETE
                break
            target = _move_to_replayed(claimed)
            replayed_files += 1
            print(
                f"replayed {path} -> {target}: {report.events} events, {report.written} written, "
                f"{report.duplicates} duplicates",
                file=out,
            )
            if report.unreadable_lines:
                exit_code = EXIT_INCOMPLETE
                print(
                    f"replay-dlq: {target}: lines that are not dead-letter events: "
                    f"{report.unreadable_lines}",
                    file=sys.stderr,
                )
            totals.events += report.events
            totals.written += report.written
            totals.duplicates += report.duplicates
            totals.unreadable_lines.extend(report.unreadable_lines)
    finally:
        await store.close()
    print(
        f"replay-dlq: {replayed_files} of {len(files)} files replayed to the {store.name} store: "
        f"{totals.events} events, {totals.written} written, {totals.duplicates} duplicates, "
        f"{len(totals.unreadable_lines)} unreadable lines",
        file=out,
    )
    return exit_code
