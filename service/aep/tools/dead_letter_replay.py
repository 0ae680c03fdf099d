"""`ad-event-processor replay-dlq`: send dead-lettered events to the configured store again.

For each dead-letter file (by default every `dead-letter-*.jsonl` in
`dead_letter.dir`, plus files an earlier run claimed but did not finish):

1. claim it: rename it into `<dir>/replaying/`. A running server appends to a
   new file from then on, and an append that was under way finishes first
   (both sides lock the file), so nothing lands in a file after it was read;
2. read each line's `event` and check it is in the stored form (aep.events.schema:
   the required keys with their types, no unknown key; missing optional keys
   get their defaults). A torn line (an append cut short by a crash, or by a
   full disk before appends were cut back) is skipped; a whole entry glued
   onto a torn one is recovered;
3. write them in batches of `batch.size` with the store's write_batch, retried
   like the server retries (`retry.*`). Stores are idempotent by event_id, so
   events that did reach the store are counted as duplicates, not stored twice
   (within the store's dedupe window: Redis' `dedupe_window`, the file store's
   `dedupe_window`, MongoDB's as long as the document exists). A batch the
   store refuses for its content (not a StoreError: e.g. a record the protobuf
   file format cannot encode) is written event by event, so only the events it
   cannot store are left out;
4. move it to `<dir>/replayed/`, so a second run does not send it again.

Lines that were not replayed (not an entry, not in the stored form, refused by
the store) are reported on stderr as `FILE:LINE: reason` and kept, verbatim,
one per line, in `<dir>/rejected/<claimed name>.jsonl` (the whole original file
is in `replayed/` too); fix them there and replay that file by naming it as PATH.

A file whose writes still fail stays in `replaying/` for the next run.
Run one replay-dlq at a time. Exit codes: 0 everything replayed (also when
there was nothing to replay); 1 a PATH does not exist, a file could not be
replayed, or lines of a file were not replayed (those listed, the file still
moves to `replayed/` once its other events are stored); 3 the store cannot be
reached.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import orjson

from aep.events.block import EventBatch, EventBlock
from aep.events.schema import EventRecord, as_stored_form
from aep.pipeline.backoff import backoff_delay
from aep.pipeline.dead_letters import DEAD_LETTER_PATTERN, lock_claimed
from aep.settings import RetrySettings, Settings
from aep.storage import EventStore, StoreError, WriteResult, create_store

CLAIMED_DIR = "replaying"
REPLAYED_DIR = "replayed"
REJECTED_DIR = "rejected"

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_STORE_UNREACHABLE = 3

# How every entry the server writes begins (orjson's compact form): where a
# whole entry glued onto a torn one starts. Inside a JSON string a quote is
# always escaped, so this never occurs within a string value.
_ENTRY_START = b'{"reason":'


@dataclass
class Line:
    """An event read from a dead-letter file, with where it came from."""

    number: int
    raw: bytes  # the entry as it is in the file, without its newline
    record: EventRecord


@dataclass
class RejectedLine:
    number: int
    raw: bytes
    reason: str


@dataclass
class FileReport:
    path: Path
    events: int = 0
    written: int = 0
    duplicates: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)


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


def read_events(path: Path, report: FileReport) -> list[Line]:
    """The events of every whole entry in the stored form; the other lines go to report."""
    lines: list[Line] = []
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            raw = raw_line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                glued_at = _glued_entry_start(raw)
                if glued_at is None:
                    reason = f"not a whole JSON entry (a torn or corrupt line): {error}"
                    report.rejected.append(RejectedLine(number, raw, reason))
                    continue
                reason = "a torn entry (an append cut short); the whole entry after it is replayed"
                report.rejected.append(RejectedLine(number, raw[:glued_at], reason))
                raw = raw[glued_at:]
                entry = orjson.loads(raw)
            event = entry.get("event") if isinstance(entry, dict) else None
            record = as_stored_form(event) if event is not None else "no event in the entry"
            if isinstance(record, str):
                report.rejected.append(
                    RejectedLine(number, raw, f"not in the stored form: {record}")
                )
                continue
            lines.append(Line(number, raw, record))
    report.events = len(lines)
    return lines


def _glued_entry_start(raw: bytes) -> int | None:
    """Where a whole entry starts that was appended onto a torn one, if there is one."""
    position = raw.find(_ENTRY_START, 1)
    while position != -1:
        try:
            entry = orjson.loads(raw[position:])
        except orjson.JSONDecodeError:
            position = raw.find(_ENTRY_START, position + 1)
            continue
        return position if isinstance(entry, dict) else None
    return None


async def write_with_retry(
    store: EventStore, batch: Sequence[EventRecord], retry: RetrySettings
) -> WriteResult:
    attempt = 0
    while True:
        attempt += 1
        try:
            return await store.write_batch(EventBatch([EventBlock.of_records(batch)]))
        except StoreError:
            if attempt >= retry.max_attempts:
                raise
        await asyncio.sleep(backoff_delay(attempt, retry.initial_backoff, retry.max_backoff))


async def write_lines(
    store: EventStore, lines: Sequence[Line], retry: RetrySettings, report: FileReport
) -> None:
    """Write lines in one batch; a batch refused for its content, event by event.

    Raises StoreError when the store keeps failing (the file is tried again later).
    """
    try:
        result = await write_with_retry(store, [line.record for line in lines], retry)
    except StoreError:
        raise
    except Exception as error:  # the store cannot take something in this batch
        if len(lines) == 1:
            reason = f"the {store.name} store cannot store it: {type(error).__name__}: {error}"
            report.rejected.append(RejectedLine(lines[0].number, lines[0].raw, reason))
            return
        for line in lines:  # idempotent by event_id: nothing of the batch was counted
            await write_lines(store, [line], retry, report)
        return
    report.written += result.written
    report.duplicates += result.duplicates


def _move_to_replayed(claimed: Path) -> Path:
    replayed_dir = claimed.parent.parent / REPLAYED_DIR
    replayed_dir.mkdir(exist_ok=True)
    target = replayed_dir / claimed.name
    os.rename(claimed, target)
    return target


def _keep_rejected(claimed: Path, rejected: Sequence[RejectedLine]) -> Path:
    """Write the lines not replayed to rejected/, whole or not at all."""
    rejected_dir = claimed.parent.parent / REJECTED_DIR
    rejected_dir.mkdir(exist_ok=True)
    target = rejected_dir / claimed.name
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(b"".join(line.raw + b"\n" for line in rejected))
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(partial, target)
    return target


async def replay_dead_letters(
    settings: Settings, paths: Iterable[Path], out: TextIO = sys.stdout
) -> int:
    """Replay into the store database.type names; with several stores, each store's
    own folder `<dead_letter.dir>/<store type>/` into that store."""
    named = list(paths)
    types = settings.database.type
    if len(types) == 1:
        return await _replay_into_one_store(settings, named, out)
    if named:
        listed = ",".join(store_type.value for store_type in types)
        print(
            f"replay-dlq: database.type lists several stores ({listed}); to replay named "
            "files, name their store: AEP_DATABASE_TYPE=<store> replay-dlq PATH...",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    exit_code = EXIT_OK
    for store_type in types:
        one_store = settings.model_copy(
            update={
                "database": settings.database.model_copy(update={"type": (store_type,)}),
                "dead_letter": settings.dead_letter.model_copy(
                    update={"dir": settings.dead_letter.dir / store_type.value}
                ),
            }
        )
        files, _ = find_dead_letter_files([one_store.dead_letter.dir])
        if not files:
            print(f"replay-dlq: store {store_type.value}: nothing to replay", file=out)
            continue  # its store is not even opened: it may be the one that is down
        print(f"replay-dlq: store {store_type.value}", file=out)
        exit_code = max(exit_code, await _replay_into_one_store(one_store, [], out))
    return exit_code


async def _replay_into_one_store(settings: Settings, named: list[Path], out: TextIO) -> int:
    files, missing = find_dead_letter_files(named or [settings.dead_letter.dir])
    if named and missing:
        names = ", ".join(str(path) for path in missing)
        print(f"replay-dlq: no such file or directory: {names}", file=sys.stderr)
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
            lines = read_events(claimed, report)
            size = settings.batch.size
            try:
                for offset in range(0, len(lines), size):
                    await write_lines(store, lines[offset : offset + size], settings.retry, report)
                kept = _keep_rejected(claimed, report.rejected) if report.rejected else None
            except (StoreError, OSError) as error:
                print(
                    f"replay-dlq: {claimed}: store write failed ({error}); the file stays in "
                    f"{claimed.parent} for the next run",
                    file=sys.stderr,
                )
                exit_code = EXIT_INCOMPLETE
                break
            target = _move_to_replayed(claimed)
            replayed_files += 1
            not_replayed = f", {len(report.rejected)} lines not replayed" if kept else ""
            print(
                f"replayed {path} -> {target}: {report.events} events, {report.written} written, "
                f"{report.duplicates} duplicates{not_replayed}",
                file=out,
            )
            if kept is not None:
                exit_code = EXIT_INCOMPLETE
                for line in sorted(report.rejected, key=lambda rejected: rejected.number):
                    print(f"replay-dlq: {target}:{line.number}: {line.reason}", file=sys.stderr)
                print(
                    f"replay-dlq: {target}: {len(report.rejected)} lines not replayed, "
                    f"kept in {kept}",
                    file=sys.stderr,
                )
            totals.events += report.events
            totals.written += report.written
            totals.duplicates += report.duplicates
            totals.rejected.extend(report.rejected)
    finally:
        await store.close()
    kept_in = f" (kept in {REJECTED_DIR}/)" if totals.rejected else ""
    print(
        f"replay-dlq: {replayed_files} of {len(files)} files replayed to the {store.name} store: "
        f"{totals.events} events, {totals.written} written, {totals.duplicates} duplicates, "
        f"{len(totals.rejected)} lines not replayed{kept_in}",
        file=out,
    )
    return exit_code
