"""The shared file helpers: whole writes, their partial failures, names in files."""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from aep.storage.disk import (
    IncompleteWriteError,
    file_stamp,
    fsync_directory,
    instance_token,
    write_all,
    write_all_parts,
)


def _file_after(path: Path, write: Callable[[int], object]) -> bytes:
    """What a new file holds after `write(fd)` on it (opened for appending)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        write(fd)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_write_all_writes_every_byte(tmp_path: Path) -> None:
    def write(fd: int) -> None:
        write_all(fd, b"a" * 300_000)
        write_all(fd, b"")

    assert _file_after(tmp_path / "f", write) == b"a" * 300_000


def test_a_write_failing_part_way_says_how_much_was_written() -> None:
    # A non-blocking pipe takes what fits in its buffer, then refuses with EAGAIN.
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETFL, os.O_NONBLOCK)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        with pytest.raises(IncompleteWriteError) as caught:
            write_all(write_end, b"x" * (capacity * 2))
    finally:
        os.close(read_end)
        os.close(write_end)
    error = caught.value
    print(f"pipe of {capacity} bytes: {error.written} written before {error!r}")
    assert error.written == capacity
    assert error.errno == errno.EAGAIN
    # It reads as the failed os.write's own error.
    assert str(error) == str(OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)))
    assert isinstance(error.__cause__, BlockingIOError)


@pytest.mark.parametrize(
    "parts",
    [
        [b"one line\n"],
        [b"a" * 70_000, b"", b"b" * 3, b"c" * 200_000],
        [bytes([65 + index % 26]) * (index % 7) for index in range(3_000)],  # past IOV_MAX
    ],
    ids=["one part", "parts of mixed sizes", "more parts than one writev takes"],
)
def test_write_all_parts_writes_them_in_order(tmp_path: Path, parts: list[bytes]) -> None:
    assert _file_after(tmp_path / "f", lambda fd: write_all_parts(fd, parts)) == b"".join(parts)


def test_write_all_parts_goes_on_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # writev may take any prefix (a signal, a pipe); this one takes 1000 bytes at most,
    # so a write ends inside a part, at a part's end, and spans several parts.
    real_write = os.write
    calls: list[int] = []

    def short_writev(fd: int, buffers: list[bytes | memoryview]) -> int:
        calls.append(len(buffers))
        return real_write(fd, b"".join(bytes(buffer) for buffer in buffers)[:1000])

    monkeypatch.setattr(os, "writev", short_writev)
    parts = [b"x" * 999, b"y", b"z" * 2_500, b"w" * 10, b"v" * 1_000]
    assert _file_after(tmp_path / "f", lambda fd: write_all_parts(fd, parts)) == b"".join(parts)
    assert len(calls) == 5  # 4,510 bytes, 1,000 per call


def test_parts_failing_part_way_say_how_much_was_written() -> None:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETFL, os.O_NONBLOCK)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        with pytest.raises(IncompleteWriteError) as caught:
            write_all_parts(write_end, [b"x" * (capacity // 3)] * 6)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert caught.value.written == capacity
    assert caught.value.errno == errno.EAGAIN


def test_nothing_written_is_an_incomplete_write_of_zero_bytes(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(IncompleteWriteError) as caught:
            write_all(fd, b"data")
    finally:
        os.close(fd)
    assert caught.value.written == 0
    assert caught.value.errno == errno.EBADF


def test_fsync_directory_needs_a_directory(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_directory(tmp_path / "missing")


def test_file_names_sort_by_time_and_tell_openings_apart() -> None:
    assert file_stamp(0) == "19700101T000000Z"
    moment = datetime.datetime.fromtimestamp(1_795_000_000, tz=datetime.UTC)
    assert file_stamp(1_795_000_000.9) == moment.strftime("%Y%m%dT%H%M%SZ")
    assert file_stamp(1_795_000_000) < file_stamp(1_795_000_001)
    assert len(file_stamp()) == len("19700101T000000Z")
    tokens = {instance_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) == 8 and int(token, 16) >= 0 for token in tokens)
