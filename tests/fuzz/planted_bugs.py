"""Plants bugs in copies of the native codec and shows which test catches each, and when.

    .venv/bin/python tests/fuzz/planted_bugs.py [--examples N] [--only NAME]

Each mutant is one small edit of codec_core.c (the kind of mistake a
hand-written parser makes) or of id_set.c (the file store's table of recent
ids), built into a temporary folder and loaded by the tests instead of the
installed build (AEP_TEST_NATIVE_CODEC). The differential tests
(test_codec_differential.py; test_id_set.py for id_set.c) run with the CI
budget (AEP_CODEC_EXAMPLES, 600) and stop at
the first failure; memory mutants run the sanitized build. Prints one line per
mutant: caught or not, by which test, after how many seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.helpers

from tests.helpers.native_build import (
    C_HEADERS,
    C_SOURCES,
    CODEC_DIR,
    OVERRIDE_ENV,
    REPO,
    SANITIZE_FLAGS,
    build_extension,
    sanitizer_environment,
)


@dataclass(frozen=True)
class Mutant:
    name: str
    old: str
    new: str
    sanitized: bool = False
    source: str = "codec_core.c"

    @property
    def test_file(self) -> str:
        """The tests that hold this source to its Python counterpart."""
        return "test_id_set.py" if self.source == "id_set.c" else "test_codec_differential.py"


MUTANTS = [
    Mutant(
        "length prefix of up to 6 bytes",
        "        *len = value;\n        return AEP_OK;\n    }\n    uint64_t value = 0;\n"
        "    for (int i = 0; i < 5; i++) {",
        "        *len = value;\n        return AEP_OK;\n    }\n    uint64_t value = 0;\n"
        "    for (int i = 0; i < 6; i++) {",
    ),
    Mutant(
        "map entry holding another field kept",
        "    if (other) return AEP_OK;\n",
        "",
    ),
    Mutant(
        "timestamp occurrences not merged",
        "            event->has_timestamp = 1;\n",
        "            event->has_timestamp = 1;\n            event->seconds = 0;\n"
        "            event->nanos = 0;\n",
    ),
    Mutant(
        "lengths in bytes instead of characters",
        "chars += (s.ptr[i] & 0xc0) != 0x80;",
        "chars += 1;",
    ),
    Mutant(
        "first value of a repeated string wins",
        "            if ((rc = read_string(&r, &event->text[TEXT_FIELD_OF_NUMBER[field]])))"
        " return rc;",
        "            aep_span first;\n"
        "            if ((rc = read_string(&r, &first))) return rc;\n"
        "            if (!event->text[TEXT_FIELD_OF_NUMBER[field]].len)"
        " event->text[TEXT_FIELD_OF_NUMBER[field]] = first;",
    ),
    Mutant("no surrogate check", "            if (c == 0xed) hi = 0x9f;\n", ""),
    Mutant(
        "wrong wire type taken as known (price_micros as fixed32)",
        "} else if (field == 10 && wire_type == 0) {",
        "} else if (field == 10 && (wire_type == 0 || wire_type == 5)) {",
    ),
    Mutant("nesting limit 101", "#define DEPTH_LIMIT 100", "#define DEPTH_LIMIT 101"),
    Mutant(
        "a field running past its event accepted",
        "            if ((rc = parse_attribute(sub, event, depth - 1))) return rc;\n"
        "        } else if ((rc = skip_field(&r, field, wire_type, depth))) {\n"
        "            return rc;\n        }\n    }\n"
        "    return r.p > r.end ? AEP_ERR_WIRE : AEP_OK;",
        "            if ((rc = parse_attribute(sub, event, depth - 1))) return rc;\n"
        "        } else if ((rc = skip_field(&r, field, wire_type, depth))) {\n"
        "            return rc;\n        }\n    }\n    return AEP_OK;",
    ),
    Mutant(
        "negative nanos truncated instead of floored",
        "    if (nanos % 1000 != 0 && nanos < 0) micros -= 1; /* Python's floor division */\n",
        "",
    ),
    Mutant(
        "a repeated attribute key keeps its first value",
        "    return (a->order > b->order) - (a->order < b->order);",
        "    return (a->order < b->order) - (a->order > b->order);",
    ),
    Mutant(
        "JSON escapes reserve too little room (heap overflow)",
        "bound += 6 * (event->attributes[i].key.len + event->attributes[i].value.len) + 8;",
        "bound += event->attributes[i].key.len + event->attributes[i].value.len + 8;",
        sanitized=True,
    ),
    Mutant(
        "room left in a message measured from past its end",
        "    if (r->p > r->end || len > (size_t)(r->end - r->p)) return AEP_ERR_WIRE;",
        "    if (len > (size_t)(r->end - r->p)) return AEP_ERR_WIRE;",
    ),
    Mutant(
        "a received_at that needs escapes copied as it is",
        "    ps.received_at_plain = json_plain_ok(ps.received_at);",
        "    ps.received_at_plain = 1;",
    ),
    Mutant(
        "an escape in the last byte of an 8-byte word missed",
        "            if (special & highs) break;\n            memcpy(d, &word, 8);",
        "            if (special & highs & 0x00ffffffffffffffULL) break;\n"
        "            memcpy(d, &word, 8);",
    ),
    Mutant(
        "a one-byte tag of field 0 taken",
        "        return *field == 0 || *wire_type > 5 ? AEP_ERR_WIRE : AEP_OK;",
        "        return *wire_type > 5 ? AEP_ERR_WIRE : AEP_OK;",
    ),
    Mutant(
        "a few attributes sorted the wrong way",
        "            while (j && attribute_compare(&a[j - 1], &item) > 0) {",
        "            while (j && attribute_compare(&a[j - 1], &item) < 0) {",
    ),
    Mutant(
        "a server id's version nibble wrong",
        "    bytes[6] = (uint8_t)(0x70 | ((rand_a >> 8) & 0xf));",
        "    bytes[6] = (uint8_t)(0x60 | ((rand_a >> 8) & 0xf));",
    ),
    Mutant(
        "IdSet: a removal moves back entries that are home already",
        "        if (!stays) {",
        "        if (stays) {",
        source="id_set.c",
    ),
    Mutant(
        "IdSet: a removal leaves a hole in the probe chain",
        "        int stays = hole <= index",
        "        int stays = 1 || hole <= index",
        source="id_set.c",
    ),
    Mutant(
        "IdSet: an id's closing quote found without counting the backslashes before it",
        "        if (!(backslashes & 1)) return quote;",
        "        if (1) return quote;",
        source="id_set.c",
    ),
    Mutant(
        "IdSet: a UUID packed without checking its low digits",
        "        missing |= (high == 0) | (low == 0);",
        "        missing |= (high == 0);",
        source="id_set.c",
    ),
    Mutant(
        "IdSet: claim_lines, refusing a batch, leaves its first id in",
        "        for (size_t j = 0; j < i; j++) discard_key(self, &list->keys[j]);",
        "        for (size_t j = 1; j < i; j++) discard_key(self, &list->keys[j]);",
        source="id_set.c",
    ),
    Mutant(
        "ids_of_lines: an escaped newline read back as a carriage return",
        "        case 'n': *out++ = '\\n'; break;",
        "        case 'n': *out++ = '\\r'; break;",
        source="id_set.c",
    ),
    Mutant(
        "IdSet: the copy of a long id one byte short",
        "        uint8_t *copy = PyMem_Malloc(length);",
        "        uint8_t *copy = PyMem_Malloc(length - 1);",
        sanitized=True,
        source="id_set.c",
    ),
]


def run(mutant: Mutant, examples: int, scratch: Path) -> str:
    source = scratch / "src"
    source.mkdir()
    for name in (*C_SOURCES, *C_HEADERS):
        shutil.copy(CODEC_DIR / name, source / name)
    core = source / mutant.source
    text = core.read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: the edit does not apply"
    core.write_text(text.replace(mutant.old, mutant.new))
    flags = SANITIZE_FLAGS if mutant.sanitized else ["-O1"]
    extension = build_extension(scratch / "build", flags, source)
    env = sanitizer_environment(extension) if mutant.sanitized else dict(os.environ)
    env[OVERRIDE_ENV] = str(extension)
    env["AEP_CODEC_EXAMPLES"] = str(examples)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-s",  # a sanitizer's report goes to the real stderr, before it aborts
            "--timeout=0",
            str(REPO / "tests" / "unit" / mutant.test_file),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return f"NOT CAUGHT  {mutant.name} ({elapsed:.0f}s)"
    failed = re.search(r"FAILED (\S+)", output)
    if failed:
        by = failed.group(1).split("::", 1)[-1]
    elif "Sanitizer" in output:
        report = re.search(r"ERROR: (\w+Sanitizer: [\w-]+)", output)
        by = report.group(1) if report else "a sanitizer report"
    else:
        fatal = re.search(r"(Fatal Python error: \w+|free\(\): [\w ]+|malloc\(\): [\w ]+)", output)
        by = f"the test process (exit {result.returncode}: {fatal.group(1) if fatal else '?'})"
    return f"caught      {mutant.name}: by {by} after {elapsed:.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--only", help="run the mutants whose name contains this")
    args = parser.parse_args()
    for mutant in MUTANTS:
        if args.only and args.only not in mutant.name:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            print(run(mutant, args.examples, Path(scratch)), flush=True)


if __name__ == "__main__":
    main()
