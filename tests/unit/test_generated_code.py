from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO / "service" / "aep" / "proto"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_generated_code_matches_the_proto(tmp_path: Path) -> None:
    generator = _load_generator()
    written = generator.generate(tmp_path)
    assert written, "the generator wrote nothing"
    for fresh in written:
        relative = fresh.relative_to(tmp_path)
        checked_in = CHECKED_IN / relative
        assert checked_in.exists(), f"{relative} is not checked in: run `make proto`"
        assert checked_in.read_text() == fresh.read_text(), f"{relative} is stale: run `make proto`"
