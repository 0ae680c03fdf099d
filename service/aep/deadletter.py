"""Dead-letter files: where batches go that the store refused past the retry bound.

One JSON object per line: {"reason", "failed_at", "attempts", "event": <stored form>},
in `<dead_letter.dir>/dead-letter-<UTC start>-<random>.jsonl`, fsynced per append.
`ad-event-processor replay-dlq` (aep.replay) sends them to the store again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from aep.records import EventRecord, format_epoch

DEAD_LETTER_PATTERN = "dead-letter-*.jsonl"


class DeadLetterQueue:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._path: Path | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path | None:
        return self._path

    async def append(self, records: Sequence[EventRecord], reason: str, attempts: int) -> None:
        """Raises OSError when even the dead-letter file cannot be written."""
        failed_at = format_epoch(time.time())
        lines = b"".join(
            orjson.dumps(
                {"reason": reason, "failed_at": failed_at, "attempts": attempts, "event": record},
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for record in records
        )
        async with self._lock:
            await asyncio.to_thread(self._write, lines)

    def _write(self, data: bytes) -> None:
        if self._path is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            instance = secrets.token_hex(4)  # pid is 1 in every container restart
            self._path = self._directory / f"dead-letter-{stamp}-{instance}.jsonl"
        fd = _open_locked(self._path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock


def _open_locked(path: Path) -> int:
    """Open path for appending, locked, and still at path.

    replay-dlq claims a file by renaming it and then taking this lock, so an
    append either finished before the claim (and is replayed) or lands in a new
    file at the old path (and waits for the next replay); none is stranded in
    a file that was already replayed.
    """
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
