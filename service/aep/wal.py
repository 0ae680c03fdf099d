"""Write-ahead log: accepted events on local disk before they reach the store.

With `wal.dir` set, every admitted submission is appended here; an RPC in ack
mode `durable` returns once its append is fsynced. Appends arriving while a
write is in progress are written together with one write + fsync (group
commit), so the fsync cost is shared by everything that arrived meanwhile.

Segments: `wal-<sequence>.log`, records framed as
`<payload length: u32 LE><crc32 of payload: u32 LE><payload>`, the payload an
orjson array of stored-form records. A segment is rotated at
`wal.segment_bytes` and deleted once every submission in it was written to
the store (or dead-lettered). At start-up the remaining segments are replayed
into the pipeline; stores are idempotent by event_id, so events written
before the crash are counted as duplicates, not stored twice. A record whose
checksum or length does not hold ends the readable part of its segment (a
crash mid-append leaves such a tail); the segment is then renamed to
`*.corrupt` (quarantined) with a log line and a counter, never a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from aep.records import EventRecord

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT_GLOB = "wal-*.log"
_MAX_RECORD_BYTES = 256 * 1024 * 1024


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
    # Quarantined (corrupt tail): kept for inspection after its records are stored.
    keep: bool = False


@dataclass
class _Append:
    payload: bytes
    done: asyncio.Future[Segment]


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_segment(path: Path) -> tuple[list[list[EventRecord]], bool]:
    """The records of a segment in order, and whether it ended cleanly."""
    data = path.read_bytes()
    records: list[list[EventRecord]] = []
    position = 0
    while position < len(data):
        if position + _HEADER.size > len(data):
            return records, False
        length, checksum = _HEADER.unpack_from(data, position)
        start = position + _HEADER.size
        payload = data[start : start + length]
        if length > _MAX_RECORD_BYTES or len(payload) != length:
            return records, False
        if zlib.crc32(payload) != checksum:
            return records, False
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return records, False
        if not isinstance(decoded, list):
            return records, False
        records.append(decoded)
        position = start + length
    return records, True


class WriteAheadLog:
    """Group-committed append-only segments; owned by the event loop."""

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._segments: dict[int, Segment] = {}
        self._current: Segment | None = None
        self._fd: int | None = None
        self._queue: list[_Append] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.quarantined = 0
        self.fsyncs = 0

    # -- start-up ----------------------------------------------------------
    def open(self) -> list[Segment]:
        """Create the folder; return the segments earlier runs left, to replay (oldest first).

        Each segment is read once here to check it, but not kept: the replay reads
        one segment at a time (read_segment), so memory stays bounded by
        wal.segment_bytes however much the log holds.
        """
        self._directory.mkdir(parents=True, exist_ok=True)
        leftovers: list[Segment] = []
        last_sequence = 0
        for path in sorted(self._directory.glob(_SEGMENT_GLOB)):
            sequence = int(path.stem.split("-", 1)[1])
            last_sequence = max(last_sequence, sequence)
            records, clean = read_segment(path)
            segment = Segment(sequence, path, path.stat().st_size, sealed=True)
            if not clean:
                quarantine = path.with_suffix(".corrupt")
                path.rename(quarantine)
                segment.path = quarantine
                segment.keep = True
                self.quarantined += 1
                logger.error(
                    "write-ahead log segment has a corrupt tail; replaying its readable part "
                    "and quarantining it",
                    extra={"segment": str(quarantine), "readable_records": len(records)},
                )
            if records:
                self._segments[sequence] = segment
                leftovers.append(segment)
            elif clean:
                path.unlink()
        self._open_segment(last_sequence + 1)
        return leftovers

    def start(self) -> None:
        self._writer = asyncio.create_task(self._run_writer(), name="wal-writer")

    # -- appends -----------------------------------------------------------------
    async def append(self, records: list[EventRecord]) -> Segment:
        """Append and wait for the fsync; the segment is then pinned by one submission."""
        if self._closing:
            raise WalError("the write-ahead log is closed")
        pending = _Append(orjson.dumps(records), asyncio.get_running_loop().create_future())
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
            segment = self._segment_for(sum(len(a.payload) for a in group))
            data = b"".join(frame(a.payload) for a in group)
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as error:
                failure = WalError(f"write-ahead log write failed: {error}")
                for item in group:
                    if not item.done.done():
                        item.done.set_exception(failure)
                continue
            segment.size += len(data)
            segment.pending += len(group)
            for item in group:
                if item.done.done():  # the caller went away before the fsync
                    segment.pending -= 1
                else:
                    item.done.set_result(segment)

    def _write(self, data: bytes) -> None:
        fd = self._fd
        assert fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        self.fsyncs += 1

    def _segment_for(self, size: int) -> Segment:
        current = self._current
        assert current is not None
        if current.size and current.size + size > self._segment_bytes:
            current.sealed = True
            self._open_segment(current.sequence + 1)
            self._maybe_delete(current)
        assert self._current is not None
        return self._current

    def _open_segment(self, sequence: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self._directory / f"wal-{sequence:012d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        directory_fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        self._current = Segment(sequence, path)
        self._segments[sequence] = self._current

    def _maybe_delete(self, segment: Segment) -> None:
        if segment.sealed and segment.pending <= 0 and not segment.keep:
            segment.path.unlink(missing_ok=True)
            self._segments.pop(segment.sequence, None)

    # -- state and shutdown ---------------------------------------------------------
    async def close(self) -> None:
        """After the pipeline drained: write what is queued, delete what is committed."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        current = self._current
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if current is not None:
            current.sealed = True
            self._maybe_delete(current)
