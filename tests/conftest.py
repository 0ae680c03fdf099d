from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerProcess, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server on the file store, default settings, free loopback ports."""
    with running_server(tmp_path / "server") as process:
        yield process
