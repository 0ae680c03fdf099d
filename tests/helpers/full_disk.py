"""A small real tmpfs that tests fill up, for ENOSPC on real syscalls (needs root)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_CHUNK = b"\0" * 65536


@dataclass
class SmallDisk:
    """A mounted tmpfs; `fill` takes its space with a filler file, `free` gives it back."""

    root: Path

    @property
    def filler(self) -> Path:
        return self.root / "filler"

    def fill(self, leave_bytes: int = 0) -> None:
        """Take every free byte, then give back `leave_bytes` (rounded down to pages)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, _CHUNK)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
            size = os.fstat(fd).st_size
            os.ftruncate(fd, max(0, size - leave_bytes))
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def fill_inodes(self) -> list[Path]:
        """Create empty files until no inode is left (a tmpfs mounted with nr_inodes).

        Creating a file then fails with ENOSPC, while writes to open files still work.
        """
        created: list[Path] = []
        while True:
            path = self.root / f"inode-filler-{len(created)}"
            try:
                path.touch(exist_ok=False)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return created
            created.append(path)

    def available(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def small_tmpfs(
    directory: Path, size: str = "4m", nr_inodes: int | None = None
) -> Iterator[SmallDisk]:
    """Mount a tmpfs of `size` (and `nr_inodes` files) at directory.

    Unmounted, and its data gone, afterwards.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True)
    try:
        yield SmallDisk(directory)
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
