"""Write-ahead log: accepted events on local disk before they reach the store.

With `wal.dir` set, every admitted submission is appended here; an RPC in ack
mode `durable` returns once its append is fsynced. Appends arriving while a
write is in progress are written together with one write + fsync (group
commit), so the fsync cost is shared by everything that arrived meanwhile.

Segments: `wal-<sequence>.log`, records framed as
`<payload length: u32 LE><crc32 of payload: u32 LE><payload>`, the payload the
submission's block: its events' stored form as JSON Lines, the bytes the
codec encoded and the file store appends (segments of earlier versions hold a
JSON array of stored-form records; they are read too). A segment is rotated at
`wal.segment_bytes` and deleted once every submission in it was written to
the store (or dead-lettered). At start-up the remaining segments are replayed
into the pipeline; stores are idempotent by event_id, so events written
before the crash are counted as duplicates, not stored twice.

Faults:
- A write or fsync that fails cuts the segment back to its size before the
  write, so that later appends follow the last good record; when even that
  fails, the next append goes to a new segment. The callers of the failed
  group get WalError (UNAVAILABLE); the writer keeps going.
- A rotation that cannot create the new segment (ENOSPC, EMFILE) fails that
  group the same way and is tried again with the next one.
- A record whose length or checksum does not hold (a torn tail, flipped
  bytes, a zeroed stretch) hides nothing after it: reading resyncs on the next
  offset holding a whole valid record. The damage is counted and logged once
  per segment; the segment keeps its name until everything readable in it was
  stored, then moves to `quarantine/` for inspection. Segments an earlier
  version renamed `*.corrupt` are replayed the same way.
- Files in the folder that are not segments are left alone with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from aep.events.block import EventBlock
from aep.storage.disk import fsync_directory, write_all

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_MAX_RECORD_BYTES = 256 * 1024 * 1024
# The shortest payload: "{}\n", or an empty JSON array (earlier versions).
_MIN_PAYLOAD_BYTES = 2
# The first and last byte of a payload: JSON Lines, or a JSON array (earlier versions).
_JSON_LINES_EDGES = (0x7B, 0x0A)  # "{", newline
_JSON_ARRAY_EDGES = (0x5B, 0x5D)  # "[", "]"
# `*.corrupt`: quarantined by earlier versions before their replay, which may
# not have finished.
_SEGMENT_NAME = re.compile(r"wal-(\d+)\.(?:log|corrupt)")
QUARANTINE_DIR = "quarantine"
# Replayed events have no request size; a typical event's wire size stands in.
REPLAY_BYTES_PER_EVENT = 200
# Damage ranges named in the one log line per segment.
_LOGGED_DAMAGE_RANGES = 20
# New segment names tried past ones taken by stray files.
_NAME_ATTEMPTS = 1000


class WalError(Exception):
    """The log could not be written; nothing appended since the last fsync is durable."""


@dataclass(eq=False)
class Segment:
    sequence: int
    path: Path
    size: int = 0
    # Submissions appended (or replayed) from this segment and not yet stored.
    pending: int = 0
    sealed: bool = False
    # Found damaged at start-up: moved to quarantine/ once its records are stored.
    keep: bool = False
    # Events an earlier run left in it, to replay (counted at start-up).
    replay_events: int = 0


@dataclass(frozen=True)
class Damage:
    """A stretch of a segment that holds no valid record."""

    offset: int
    length: int


@dataclass
class SegmentScan:
    blocks: list[EventBlock] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(block) for block in self.blocks)

    @property
    def skipped_bytes(self) -> int:
        return sum(d.length for d in self.damage)


@dataclass
class _Append:
    payload: bytes
    done: asyncio.Future[Segment]
    tag: object = None


# Told of every record once it is written and fsynced, in log order, before its
# appender resumes: (the segment, the append's tag).
WrittenHook = Callable[[Segment, object], None]


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _record_at(data: bytes, position: int) -> tuple[EventBlock, int] | None:
    """The record framed at `position` and the offset after it, or None."""
    start = position + _HEADER.size
    if start + _MIN_PAYLOAD_BYTES > len(data):
        return None
    length, checksum = _HEADER.unpack_from(data, position)
    end = start + length
    if not _MIN_PAYLOAD_BYTES <= length <= _MAX_RECORD_BYTES or end > len(data):
        return None
    # Cheap before the checksum: every payload is JSON Lines or a JSON array.
    edges = (data[start], data[end - 1])
    if edges != _JSON_LINES_EDGES and edges != _JSON_ARRAY_EDGES:
        return None
    if zlib.crc32(memoryview(data)[start:end]) != checksum:
        return None
    payload = data[start:end]
    try:
        if edges == _JSON_LINES_EDGES:
            return EventBlock.parse(payload), end
        records = orjson.loads(payload)
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return None
        return EventBlock.of_records(records), end
    except ValueError:  # orjson.JSONDecodeError too
        return None


def scan_segment(path: Path) -> SegmentScan:
    """Every valid record of a segment in order, and the damaged stretches between.

    After a record that does not hold, reading goes on at the next offset
    where a whole valid record starts: its length fits in the segment, its
    payload is JSON Lines (or an earlier version's JSON array) with the right
    crc32. Candidates are found with a search for the payload's first byte, so
    a damaged stretch is crossed at C speed.
    """
    data = path.read_bytes()
    candidates = _Candidates(data)
    scan = SegmentScan()
    position = 0
    damaged_from: int | None = None
    while position < len(data):
        found = _record_at(data, position)
        if found is not None:
            if damaged_from is not None:
                scan.damage.append(Damage(damaged_from, position - damaged_from))
                damaged_from = None
            block, position = found
            scan.blocks.append(block)
            continue
        if damaged_from is None:
            damaged_from = position
        position = candidates.after(position + 1 + _HEADER.size)
    if damaged_from is not None:
        scan.damage.append(Damage(damaged_from, len(data) - damaged_from))
    return scan


class _Candidates:
    """Header offsets of the next possible payload starts ("{" or "[") after damage.

    The next of each byte is remembered, so that crossing a damaged stretch
    searches every byte once, not once per candidate.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._next = {ord("{"): -1, ord("["): -1}

    def after(self, start: int) -> int:
        data = self._data
        best = len(data)
        for byte, at in self._next.items():
            if 0 <= at < start or at == -1:
                at = data.find(bytes((byte,)), start)
                self._next[byte] = at if at >= 0 else len(data)
            best = min(best, self._next[byte])
        return best - _HEADER.size if best < len(data) else len(data)


def read_segment(path: Path) -> tuple[list[EventBlock], bool]:
    """The valid records of a segment in order, and whether it had no damage."""
    scan = scan_segment(path)
    return scan.blocks, not scan.damage


class WriteAheadLog:
    """Group-committed append-only segments; owned by the event loop."""

    def __init__(
        self, directory: Path, segment_bytes: int, *, on_written: WrittenHook | None = None
    ) -> None:
        self._on_written = on_written
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._segments: dict[Path, Segment] = {}
        self._current: Segment | None = None
        self._fd: int | None = None
        # The current segment may end in bytes of a failed write: rotate first.
        self._rotate_before_next = False
        # The last append failed (logged once per run of failures).
        self._failing = False
        self._queue: list[_Append] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = False  # a group's write is in progress
        # Found at start-up: segments with damage, damaged stretches, their bytes.
        self.quarantined = 0
        self.damaged_records = 0
        self.skipped_bytes = 0

    # -- start-up ----------------------------------------------------------
    def open(self) -> list[Segment]:
        """Create the folder; return the segments earlier runs left, to replay (oldest first).

        Each segment is read once here to check it and count its events, but
        not kept: the replay reads one segment at a time (read_segment), so
        memory stays bounded by wal.segment_bytes however much the log holds.
        """
        self._directory.mkdir(parents=True, exist_ok=True)
        leftovers: list[Segment] = []
        last_sequence = 0
        found: list[tuple[int, Path]] = []
        for path in self._directory.iterdir():
            name = _SEGMENT_NAME.fullmatch(path.name)
            if name is None:
                if path.name.startswith("wal-"):
                    logger.warning(
                        "not a write-ahead log segment name; leaving the file alone",
                        extra={"path": str(path)},
                    )
                continue
            sequence = int(name.group(1))
            last_sequence = max(last_sequence, sequence)  # never reuse a name, even a stray's
            if not path.is_file():
                logger.warning(
                    "named like a write-ahead log segment but not a file; leaving it alone",
                    extra={"path": str(path)},
                )
                continue
            found.append((sequence, path))
        for sequence, path in sorted(found):
            try:
                segment = self._check(sequence, path)
            except OSError as error:
                # Left where it is for the next start; not a reason to refuse this one.
                logger.error(
                    "cannot read a write-ahead log segment; skipping it this time",
                    extra={"segment": str(path), "error": str(error)},
                )
                continue
            if segment is not None:
                leftovers.append(segment)
        self._current, self._fd = self._create_segment(last_sequence + 1)
        return leftovers

    def _check(self, sequence: int, path: Path) -> Segment | None:
        """The segment to replay, or None when it holds nothing (then it is removed)."""
        scan = scan_segment(path)
        segment = Segment(
            sequence, path, path.stat().st_size, sealed=True, replay_events=scan.events
        )
        if scan.damage:
            segment.keep = True
            self.quarantined += 1
            self.damaged_records += len(scan.damage)
            self.skipped_bytes += scan.skipped_bytes
            logger.error(
                "write-ahead log segment is damaged; replaying every intact record, the "
                "damaged stretches are skipped",
                extra={
                    "segment": str(path),
                    "readable_records": len(scan.blocks),
                    "damaged_records": len(scan.damage),
                    "skipped_bytes": scan.skipped_bytes,
                    "damage": [
                        {"offset": d.offset, "length": d.length}
                        for d in scan.damage[:_LOGGED_DAMAGE_RANGES]
                    ],
                },
            )
        if not scan.blocks:
            self._retire(segment)
            return None
        self._segments[path] = segment
        return segment

    def start(self) -> None:
        self._writer = asyncio.create_task(self._run_writer(), name="wal-writer")

    # -- appends -----------------------------------------------------------------
    async def append(self, block: EventBlock, tag: object = None) -> Segment:
        """Append and wait for the fsync; the segment is then pinned by one submission.

        `tag` goes to the on_written hook with the record.
        """
        if self._closing:
            raise WalError("the write-ahead log is closed")
        pending = _Append(block.lines, asyncio.get_running_loop().create_future(), tag)
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.done

    def committed(self, segment: Segment) -> None:
        """One submission of `segment` reached the store (or the dead-letter file)."""
        segment.pending -= 1
        self._maybe_delete(segment)

    def pin(self, segment: Segment) -> None:
        segment.pending += 1

    async def _run_writer(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group, self._queue = self._queue, []
            data = b"".join(frame(a.payload) for a in group)
            self._writing = True
            try:
                segment = self._segment_for(len(data))
                await asyncio.to_thread(self._write, segment, data)
            except Exception as error:  # the writer must outlive any failure
                self._fail(group, error)
                continue
            finally:
                self._writing = False
            if self._failing:
                self._failing = False
                logger.info("write-ahead log appends succeed again")
            segment.size += len(data)
            segment.pending += len(group)
            if self._on_written is not None:
                for item in group:
                    self._on_written(segment, item.tag)
            for item in group:
                if item.done.done():  # the caller went away before the fsync
                    segment.pending -= 1
                else:
                    item.done.set_result(segment)

    def _fail(self, group: list[_Append], error: Exception) -> None:
        """The group is not in the log: its callers get WalError (UNAVAILABLE)."""
        if not isinstance(error, OSError):
            logger.error("write-ahead log append failed unexpectedly", exc_info=error)
        elif not self._failing:
            logger.error(
                "write-ahead log appends fail; durable calls get UNAVAILABLE until they work",
                extra={"error": str(error)},
            )
        self._failing = True
        failure = WalError(f"write-ahead log write failed: {error}")
        for item in group:
            if not item.done.done():
                item.done.set_exception(failure)

    def _write(self, segment: Segment, data: bytes) -> None:
        """Write and fsync; on failure the segment is cut back to what it was."""
        fd = self._fd
        assert fd is not None
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                self._truncate(fd, segment.size)
            except OSError as cut_error:
                # Bytes of the failed write stay at the end: later appends go to
                # a new segment, and the replay skips them as damage.
                self._rotate_before_next = True
                logger.error(
                    "write-ahead log: cannot cut a failed write back; the next append "
                    "starts a new segment",
                    extra={"segment": str(segment.path), "error": str(cut_error)},
                )
            raise

    def _truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        with contextlib.suppress(OSError):
            os.fsync(fd)

    def _segment_for(self, size: int) -> Segment:
        """The segment this write goes to; rotates first when due (raises OSError if it cannot)."""
        current = self._current
        assert current is not None
        if self._rotate_before_next or (current.size and current.size + size > self._segment_bytes):
            self._maybe_delete(self._rotate())
            assert self._current is not None
            return self._current
        return current

    def _rotate(self) -> Segment:
        """Appends go to a new segment from now on; the old one, sealed (raises OSError)."""
        current = self._current
        assert current is not None
        new, fd = self._create_segment(current.sequence + 1)
        if self._fd is not None:
            with contextlib.suppress(OSError):  # everything in it was fsynced
                os.close(self._fd)
        self._current, self._fd = new, fd
        self._rotate_before_next = False
        current.sealed = True
        return current

    def _create_segment(self, sequence: int) -> tuple[Segment, int]:
        """A new, empty segment file (its directory entry fsynced) and its descriptor."""
        for attempt in range(_NAME_ATTEMPTS):
            path = self._directory / f"wal-{sequence + attempt:012d}.log"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue  # a stray file (or folder) holds the name
            try:
                fsync_directory(self._directory)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
            segment = Segment(sequence + attempt, path)
            self._segments[path] = segment
            return segment, fd
        raise OSError(f"no free segment name from wal-{sequence:012d}.log on")

    def _maybe_delete(self, segment: Segment) -> None:
        if segment.sealed and segment.pending <= 0:
            self._retire(segment)

    def _retire(self, segment: Segment) -> None:
        """Everything readable in the segment is stored: delete it, or set a damaged one aside."""
        self._segments.pop(segment.path, None)
        if not segment.keep:
            segment.path.unlink(missing_ok=True)
            return
        target = self._directory / QUARANTINE_DIR / segment.path.name
        try:
            target.parent.mkdir(exist_ok=True)
            segment.path.rename(target)
        except OSError as error:
            # Left in place it is replayed again at the next start: duplicates, no loss.
            logger.error(
                "cannot move a damaged write-ahead log segment to quarantine/",
                extra={"segment": str(segment.path), "error": str(error)},
            )
            return
        logger.warning(
            "damaged write-ahead log segment replayed; kept for inspection",
            extra={"segment": str(target)},
        )
        segment.path = target

    # -- state and shutdown ---------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No append is queued or being written."""
        return not self._queue and not self._writing

    @property
    def current(self) -> Segment | None:
        """The segment appends go to now."""
        return self._current

    def held_bytes(self) -> int:
        """Bytes of every segment on disk not yet deleted (the current one included)."""
        return sum(segment.size for segment in self._segments.values())

    def rotate_now(self) -> Segment:
        """Seal the current segment (it must be idle) so it can be read whole; the sealed one.

        Later appends go to a new segment. Raises OSError when that cannot be created.
        """
        assert self.idle, "rotate_now() while an append is in flight"
        return self._rotate()

    async def close(self) -> None:
        """After the pipeline drained: write what is queued, delete what is committed."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        current = self._current
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if current is not None:
            current.sealed = True
            self._maybe_delete(current)
