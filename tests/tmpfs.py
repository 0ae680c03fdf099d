"""A small tmpfs for full-disk tests, and the ballast that fills it.

Mounting needs root (CI runs as root); elsewhere the test is skipped with the
reason. `size` bounds the bytes, `nr_inodes` the files: a tmpfs out of blocks
fails writes with ENOSPC (creating a file still works), one out of inodes
fails the creation of a file with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(
    directory: Path, size: str = "4m", nr_inodes: int | None = None
) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the tests as root)")
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes is not None else "")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True, capture_output=True)


def fill_bytes(path: Path, leave: int = 0) -> int:
    """Write `path` until the filesystem is full (then cut it back by `leave` bytes).

    Returns the ballast's size. `leave` > 0 keeps that much room free, so that
    the next write of more than `leave` bytes fails part-way through.
    """
    chunk = b"\0" * 65536
    written = 0
    with path.open("wb", buffering=0) as ballast:
        while True:
            try:
                count = ballast.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
                continue
            written += count or 0
        if leave:
            written = max(0, written - leave)
            ballast.truncate(written)
    return written


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files in `directory` until no inode is left; returns them."""
    created: list[Path] = []
    while True:
        path = directory / f"ballast-{len(created)}"
        try:
            path.touch(exist_ok=False)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            return created
        created.append(path)
