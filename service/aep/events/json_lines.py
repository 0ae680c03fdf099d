"""The stored form as JSON Lines: one object per line, `event_id` first, as orjson writes it.

The reference encoder of the stored form: the native codec must write the same
bytes (tests/unit/test_codec_differential.py), the file store appends them,
the write-ahead log and the dead-letter files hold them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson

from aep.events.schema import KEY_FIELD, EventRecord

_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE


# Between two records in orjson's compact encoding of a list of them (the key
# field comes first in every record). It cannot occur inside a string: there
# every '"' is escaped, and a string ending in "},{" is followed by one of ,:}]
# and never by the key field's name.
_RECORD_BOUNDARY = b'},{"%s":' % KEY_FIELD.encode()
_LINE_BOUNDARY = b'}\n{"%s":' % KEY_FIELD.encode()


def encode_json_lines(records: Sequence[EventRecord]) -> bytes:
    """One line per record. The whole batch is encoded in one orjson call and cut
    into lines at the record boundaries."""
    if not records:
        return b""
    joined = orjson.dumps(records)
    lines = joined[1:-1].replace(_RECORD_BOUNDARY, _LINE_BOUNDARY)
    if lines.count(b"\n") == len(records) - 1:
        return lines + b"\n"
    # Records whose first key is not the key field (never from this service).
    return b"".join([orjson.dumps(record, option=_DUMPS_OPTIONS) for record in records])


def decode_json_lines(data: bytes) -> Iterator[EventRecord]:
    """Every complete line; a partial or corrupt one (a crash mid-write) is skipped."""
    for line in data.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record
