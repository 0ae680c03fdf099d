"""Dead-letter files: where batches go that the store refused past the retry bound.

One JSON object per line: {"reason", "failed_at", "attempts", "event": <stored form>},
in `<dead_letter.dir>/dead-letter-<UTC start>-<random>.jsonl`, fsynced per append.
`ad-event-processor replay-dlq` (aep.tools.dead_letter_replay) sends them to the store again.

An append that fails part-way (ENOSPC, EIO) is cut back to its last whole line
and fsynced, and DeadLetterWriteError says how many of its events made it: the
pipeline counts exactly those as dead-lettered and the rest as lost. A file
left ending in a torn line (a crash mid-append) gets a newline before the next
append, so a later entry is never glued to a torn one.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import itertools
import os
import time
from pathlib import Path

import orjson

from aep.events.block import EventBatch
from aep.events.schema import format_epoch
from aep.storage.disk import IncompleteWriteError, file_stamp, instance_token, write_all

DEAD_LETTER_PATTERN = "dead-letter-*.jsonl"


class DeadLetterQueue:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._path: Path | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path | None:
        return self._path

    async def append(self, batch: EventBatch, reason: str, attempts: int) -> None:
        """Raises DeadLetterWriteError when not every line reached the file."""
        lines = entry_lines(batch, reason, attempts, format_epoch(time.time()))
        async with self._lock:
            await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[bytes]) -> None:
        try:
            if self._path is None:
                self._directory.mkdir(parents=True, exist_ok=True)
                name = f"dead-letter-{file_stamp()}-{instance_token()}.jsonl"
                self._path = self._directory / name
            fd = _open_locked(self._path)
        except OSError as error:
            raise DeadLetterWriteError(0, len(lines), error) from error
        try:
            _append_whole_lines(fd, lines)
        finally:
            os.close(fd)  # also releases the lock


def entry_lines(batch: EventBatch, reason: str, attempts: int, failed_at: str) -> list[bytes]:
    """One entry line per event, the event's stored-form bytes inside as the batch holds them.

    The same bytes as orjson.dumps({"reason", "failed_at", "attempts", "event"}) of the
    event's stored form: the entry is built around its JSON, not re-encoded.
    """
    prefix = b'{"reason":%b,"failed_at":%b,"attempts":%d,"event":' % (
        orjson.dumps(reason),
        orjson.dumps(failed_at),
        attempts,
    )
    return [b"%b%b}\n" % (prefix, line) for line in batch.lines()]


class DeadLetterWriteError(OSError):
    """An append failed: only its first `saved` lines are whole in the file, and fsynced."""

    def __init__(self, saved: int, total: int, cause: OSError) -> None:
        message = f"{saved} of {total} dead-letter lines written: {cause.strerror or cause}"
        if cause.errno is None:
            super().__init__(message)
        else:
            super().__init__(cause.errno, message)
        self.saved = saved
        self.total = total


def _append_whole_lines(fd: int, lines: list[bytes]) -> None:
    """Append lines to the locked fd; on failure keep only whole lines (see the module doc)."""
    try:
        start = os.fstat(fd).st_size
        # A file ending in a torn line: start on a new line so no entry is glued to it.
        separator = b"\n" if start and os.pread(fd, 1, start - 1) != b"\n" else b""
    except OSError as error:
        raise DeadLetterWriteError(0, len(lines), error) from error
    data = separator + b"".join(lines)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except OSError as error:
        if isinstance(error, IncompleteWriteError):
            line_ends = list(itertools.accumulate((len(line) for line in lines), initial=0))
            saved = bisect.bisect_right(line_ends, max(error.written - len(separator), 0)) - 1
            keep = start + len(separator) + line_ends[saved] if saved else start
        else:
            saved = 0  # the fsync failed: nothing of this append is known to be on disk
            keep = start
        try:
            # Cut the torn line off, as the file store does, so that the next
            # append starts clean; then make the whole lines durable.
            os.ftruncate(fd, keep)
            if saved:
                os.fsync(fd)
        except OSError:
            saved = 0
        raise DeadLetterWriteError(saved, len(lines), error) from error


def _open_locked(path: Path) -> int:
    """Open path for appending, locked, and still at path.

    replay-dlq claims a file by renaming it and then taking this lock, so an
    append either finished before the claim (and is replayed) or lands in a new
    file at the old path (and waits for the next replay); none is stranded in
    a file that was already replayed.
    """
    while True:
        # Read too: an append checks how the file ends.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # claimed by replay-dlq meanwhile: append to a new file


def lock_claimed(fd: int) -> None:
    """Wait until no append to this (just renamed) file is under way any more."""
    fcntl.flock(fd, fcntl.LOCK_EX)
