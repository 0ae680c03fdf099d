"""pip builds the native codec with the package, and installs without it when there is no compiler.

Wheels built from this checkout (pip, build isolation from the package index):
one with the machine's compiler holds aep/events/codec/_native*.so; one with
CC pointing at a compiler that always fails still builds, without it, and a
server run from that wheel serves on the Python codec with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.chart_render import REPO
from tests.helpers.support import ServerProcess

pytestmark = pytest.mark.integration


def _checkout_copy(into: Path) -> Path:
    """What the image build copies; no build/ or compiled module to reuse."""
    source = into / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("proto", "service"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    return source


def _wheel(out: Path, **env: str) -> tuple[Path, str]:
    source = _checkout_copy(out)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--verbose",
            "--wheel-dir",
            str(out),
            ".",
        ],
        cwd=source,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("ad_event_processor-*.whl")
    return wheel, result.stdout + result.stderr


def _native_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if "/_native" in name and name.endswith(".so")]


def test_the_wheel_holds_the_native_codec(tmp_path: Path) -> None:
    wheel, _ = _wheel(tmp_path)
    members = _native_members(wheel)
    print(f"{wheel.name}: {members}")
    assert members and members[0].startswith("aep/events/codec/_native")


def test_without_a_compiler_the_wheel_builds_and_serves_on_python(tmp_path: Path) -> None:
    broken = tmp_path / "no-cc"
    broken.write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
    broken.chmod(0o755)
    wheel, log = _wheel(tmp_path / "wheel", CC=str(broken), LDSHARED=str(broken))
    assert _native_members(wheel) == []
    assert "building extension" in log and "failed" in log, log[-3000:]
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    # The wheel's aep first on the path; its dependencies from this environment.
    server = ServerProcess(tmp_path / "data", {"PYTHONPATH": str(unpacked)}).start()
    try:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        serving = [line for line in lines if line.get("message") == "serving"]
        warned = [line for line in lines if "native codec is not built" in line.get("message", "")]
        print(f"serving: {serving[-1] if serving else None}; warning: {warned}")
        assert serving and serving[-1]["codec"] == "python"
        assert warned and warned[0]["level"] == "warning"
    finally:
        assert server.stop() == 0
