"""Low-level file helpers shared by the file store, the write-ahead log and the dead letters.

Only the standard library: every layer that writes files may import this one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

# At most this many buffers per writev(2) (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024))


class IncompleteWriteError(OSError):
    """A write failed part-way: `written` bytes of it reached the file first.

    Carries the errno and message of the failed os.write, so it reads as that error.
    """

    def __init__(self, written: int, cause: OSError) -> None:
        if cause.errno is None:
            super().__init__(*cause.args)
        else:
            super().__init__(cause.errno, cause.strerror)
        self.written = written


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data`: one os.write may take only part of it.

    Raises IncompleteWriteError when a write fails, saying how much was written
    before it, so that the caller can cut a partial write back.
    """
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise IncompleteWriteError(len(data) - len(view), error) from error


def write_all_parts(fd: int, parts: Sequence[bytes]) -> None:
    """Write every byte of `parts`, in order, as if joined: os.writev, so that a
    batch of blocks reaches the file without being copied into one buffer first
    (at 1,000-event requests the join was a third of the bytes copied per event).

    Raises IncompleteWriteError like write_all, counting the bytes of all parts.
    """
    if len(parts) == 1 or len(parts) > _IOV_MAX:  # many small parts: one copy costs less
        write_all(fd, parts[0] if len(parts) == 1 else b"".join(parts))
        return
    pending: list[bytes | memoryview] = [part for part in parts if part]
    first = written = 0  # pending[first] is the next part with bytes left
    try:
        while first < len(pending):
            n = os.writev(fd, pending[first : first + _IOV_MAX])
            written += n
            while first < len(pending) and n >= len(pending[first]):
                n -= len(pending[first])
                first += 1
            if n:
                pending[first] = memoryview(pending[first])[n:]
    except OSError as error:
        raise IncompleteWriteError(written, error) from error


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries durable (a file just created or renamed in it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_stamp(at: float | None = None) -> str:
    """`at` (default: now) in UTC as used in file names: 20261126T190000Z, sorts by time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def instance_token() -> str:
    """A random part for file names, new per opening: in a container every restart is
    pid 1, so the pid does not tell two runs' files apart."""
    return secrets.token_hex(4)
