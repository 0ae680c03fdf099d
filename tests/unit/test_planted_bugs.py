"""tests/fuzz/planted_bugs.py stays runnable: each of its edits still applies to the sources.

Its mutants are text edits of codec_core.c and id_set.c; an edit of those files
can make one silently stop matching (the script then refuses to run it). This
checks that without building anything.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.native_build import CODEC_DIR

SCRIPT = Path(__file__).resolve().parents[1] / "fuzz" / "planted_bugs.py"


def _planted_bugs() -> Any:
    spec = importlib.util.spec_from_file_location("planted_bugs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["planted_bugs"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MUTANTS = _planted_bugs().MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=[mutant.name for mutant in MUTANTS])
def test_the_planted_bug_applies_once(mutant: Any) -> None:
    source = (CODEC_DIR / mutant.source).read_text()
    assert source.count(mutant.old) == 1, f"the edit {mutant.name!r} no longer applies"
    assert mutant.old != mutant.new
