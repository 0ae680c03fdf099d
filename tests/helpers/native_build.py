"""Builds of the native codec for the tests: sanitized, fuzzed or mutated copies.

The installed extension is what `pip install` built; these builds go to a
temporary folder and are loaded instead of it by AEP_TEST_NATIVE_CODEC
(see `load_override`, called by tests/helpers/codec_wire.py before the codec loads).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODEC_DIR = REPO / "service" / "aep" / "events" / "codec"
C_SOURCES = ("_native.c", "codec_core.c", "id_set.c")
C_HEADERS = ("codec_core.h", "id_set.h")
OVERRIDE_ENV = "AEP_TEST_NATIVE_CODEC"
# What setup.py compiles with (and what the fuzz build adds to).
BASE_FLAGS = ["-std=gnu11", "-ffp-contract=off"]
SANITIZE_FLAGS = [
    "-g",
    "-O1",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
]


def source_digest(directory: Path = CODEC_DIR) -> str:
    """As setup.py computes it: the sources sorted by their repository path."""
    digest = hashlib.sha256()
    paths = sorted(f"service/aep/events/codec/{name}" for name in (*C_SOURCES, *C_HEADERS))
    for path in paths:
        digest.update((directory / Path(path).name).read_bytes())
    return digest.hexdigest()


def compiler(name: str) -> str | None:
    return shutil.which(name)


def build_extension(out_dir: Path, flags: list[str], source_dir: Path = CODEC_DIR) -> Path:
    """The CPython extension from source_dir's C files, into out_dir; its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    command = [
        "gcc",
        "-shared",
        "-fPIC",
        *BASE_FLAGS,
        *flags,
        f"-I{include}",
        f"-I{source_dir}",
        f'-DAEP_SOURCE_SHA256="{source_digest(source_dir)}"',
        *(str(source_dir / name) for name in C_SOURCES),
        "-o",
        str(target),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return target


def build_fuzzer(out: Path, source_dir: Path = CODEC_DIR) -> Path:
    """The libFuzzer harness over codec_core.c (clang: libFuzzer, ASan, UBSan)."""
    clang = compiler("clang-14") or compiler("clang")
    assert clang is not None
    command = [
        clang,
        *BASE_FLAGS,
        "-g",
        "-O1",
        "-fsanitize=fuzzer,address,undefined",
        "-fno-sanitize-recover=all",
        f"-I{source_dir}",
        str(REPO / "tests" / "fuzz" / "fuzz_codec.c"),
        str(source_dir / "codec_core.c"),
        "-o",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def sanitizer_environment(extension: Path) -> dict[str, str]:
    """Run Python with gcc's ASan runtime first in the process, the build loaded."""
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return {
        **os.environ,
        OVERRIDE_ENV: str(extension),
        "LD_PRELOAD": libasan,
        # CPython frees little at exit: leak reports would be its, not ours.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


def load_override() -> None:
    """With AEP_TEST_NATIVE_CODEC set: that build is aep.events.codec._native."""
    path = os.environ.get(OVERRIDE_ENV)
    name = "aep.events.codec._native"
    if not path or name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
