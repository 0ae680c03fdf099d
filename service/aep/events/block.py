"""Events encoded once: what the pipeline carries and the stores write.

An EventBlock is a request's valid events in their stored form, as JSON
Lines bytes (one object per line, each ending in a newline), with what stores
need beside them: each line's end offset and the event types. The codec
builds it in the same pass that checks the request; from there on no event is
a Python object again unless a store needs one (records(), event_ids). The
ids are in the lines (each line starts with its event_id): the file store's
dedupe reads them from there in C (IdSet.claim_lines); event_ids, the ids as
str, is read out of the lines the first time a store asks for it, unless the
block was made with them.

An EventBatch is what one store write takes: the blocks (or parts of blocks)
the batcher joined, without copying an event until a store asks for the joined
bytes. A line of JSON never holds a raw newline (JSON escapes it), so the
newlines are exactly the line ends: lines() splits on them in C.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from aep.events.event_types import EVENT_TYPE_NUMBERS
from aep.events.json_lines import encode_json_lines
from aep.events.schema import KEY_FIELD, EventRecord

_NO_ENDS: Sequence[int] = ()
_ID_PREFIX = b'{"%s":"' % KEY_FIELD.encode()
_ids_of_lines: Callable[[bytes], list[str]] | None = None


def ids_of_lines(lines: bytes) -> list[str]:
    """Each JSON line's event_id (the first key of every stored form): in C when the
    extension is built (aep.events.codec._native.ids_of_lines), else with orjson.
    ValueError for a line that does not start with an event_id string."""
    global _ids_of_lines
    if _ids_of_lines is None:  # looked up on first use: tests may load another build first
        try:
            from aep.events.codec._native import ids_of_lines as native_ids_of_lines
        except ImportError:
            _ids_of_lines = ids_of_lines_with_orjson
        else:
            _ids_of_lines = native_ids_of_lines
    return _ids_of_lines(lines)


def ids_of_lines_with_orjson(lines: bytes) -> list[str]:
    """ids_of_lines without the extension: each line decoded whole."""
    ids: list[str] = []
    if not lines:
        return ids
    for line in lines.split(b"\n")[:-1] if lines.endswith(b"\n") else lines.split(b"\n"):
        record = orjson.loads(line) if line.startswith(_ID_PREFIX) else None
        if not isinstance(record, dict) or not isinstance(record.get(KEY_FIELD), str):
            raise ValueError("ids_of_lines: a line that does not start with an event_id string")
        ids.append(record[KEY_FIELD])
    return ids


class EventBlock:
    """A run of stored-form events as JSON Lines; line i ends at ends[i] - base."""

    __slots__ = ("_event_ids", "base", "ends", "event_types", "lines")

    def __init__(
        self,
        lines: bytes,
        ends: Sequence[int],
        event_ids: list[str] | None,
        event_types: bytes,
        base: int = 0,
    ) -> None:
        self.lines = lines
        # Offsets into the codec's original bytes; `base` is where `lines` starts
        # in them, so that a slice shares `ends` instead of rebasing every offset.
        self.ends = ends
        self._event_ids = event_ids  # None: not read out of the lines yet
        self.event_types = event_types  # one byte per event: its EventType number
        self.base = base

    def __len__(self) -> int:
        return len(self.event_types)

    @property
    def event_ids(self) -> list[str]:
        """The ids as str, in order (read out of the lines once, if need be)."""
        if self._event_ids is None:
            self._event_ids = ids_of_lines(self.lines)
        return self._event_ids

    @property
    def nbytes(self) -> int:
        return len(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The stored forms as dicts (tools and tests; the pipeline never needs them)."""
        return EventBatch((self,)).records()

    def slice(self, start: int, stop: int) -> EventBlock:
        """Events start .. stop - 1 (0 <= start <= stop <= len)."""
        if start == 0 and stop == len(self.event_types):
            return self
        if start == stop:
            return EMPTY_BLOCK
        ends = self.ends
        base = self.base
        begin = ends[start - 1] if start else base
        return EventBlock(
            self.lines[begin - base : ends[stop - 1] - base],
            ends[start:stop],
            None if self._event_ids is None else self._event_ids[start:stop],
            self.event_types[start:stop],
            begin,
        )

    @classmethod
    def of_lines(cls, lines: bytes, event_ids: list[str], event_types: bytes) -> EventBlock:
        """A block of JSON Lines whose line ends are not known yet (found here, in C)."""
        ends: list[int] = []
        position = 0
        find = lines.find
        for _ in range(len(event_types)):
            position = find(b"\n", position) + 1
            ends.append(position)
        return cls(lines, ends, event_ids, event_types)

    @classmethod
    def parse(cls, lines: bytes) -> EventBlock:
        """The block these JSON Lines bytes are (read back from disk); ValueError if they
        are not one JSON object per line."""
        if not lines.endswith(b"\n"):
            raise ValueError("JSON Lines must end in a newline")
        records = orjson.loads(b"[" + lines[:-1].replace(b"\n", b",") + b"]")
        if not all(isinstance(record, dict) for record in records):
            raise ValueError("every line must be a JSON object")
        return cls.of_lines(
            lines,
            [str(record.get("event_id")) for record in records],
            bytes(EVENT_TYPE_NUMBERS.get(str(record.get("event_type")), 0) for record in records),
        )

    @classmethod
    def of_records(cls, records: Sequence[EventRecord]) -> EventBlock:
        """The block these stored forms encode to (the reference encoder's bytes)."""
        return cls.of_lines(
            encode_json_lines(records),
            [str(record["event_id"]) for record in records],
            bytes(EVENT_TYPE_NUMBERS.get(str(record.get("event_type")), 0) for record in records),
        )


EMPTY_BLOCK = EventBlock(b"", _NO_ENDS, [], b"")


class EventBatch:
    """Blocks joined for one store write; nothing is copied until a store asks."""

    __slots__ = ("_event_ids", "_event_types", "_joined", "blocks", "count")

    def __init__(self, blocks: Iterable[EventBlock] = ()) -> None:
        self.blocks: list[EventBlock] = []
        self.count = 0
        self._joined: bytes | None = None
        self._event_ids: list[str] | None = None
        self._event_types: bytes | None = None
        for block in blocks:
            self.add(block)

    def add(self, block: EventBlock) -> None:
        if not block.event_types:
            return
        self.blocks.append(block)
        self.count += len(block.event_types)
        self._joined = self._event_ids = self._event_types = None

    def __len__(self) -> int:
        return self.count

    @property
    def joined(self) -> bytes:
        """Every event's line, in order: the JSON Lines a file store appends as it is."""
        if self._joined is None:
            blocks = self.blocks
            self._joined = (
                blocks[0].lines if len(blocks) == 1 else b"".join([block.lines for block in blocks])
            )
        return self._joined

    @property
    def event_ids(self) -> list[str]:
        if self._event_ids is None:
            if len(self.blocks) == 1:
                self._event_ids = self.blocks[0].event_ids
            else:
                ids: list[str] = []
                for block in self.blocks:
                    ids.extend(block.event_ids)
                self._event_ids = ids
        return self._event_ids

    @property
    def event_types(self) -> bytes:
        if self._event_types is None:
            self._event_types = b"".join([block.event_types for block in self.blocks])
        return self._event_types

    @property
    def nbytes(self) -> int:
        return sum(len(block.lines) for block in self.blocks)

    @property
    def parts(self) -> list[bytes]:
        """The blocks' lines, in order: the joined bytes without joining them."""
        return [block.lines for block in self.blocks]

    def lines(self) -> list[bytes]:
        """Each event's line without its newline (a Kafka value, a Redis entry's source)."""
        joined = self.joined
        if not joined:
            return []
        return joined[:-1].split(b"\n")

    def records(self) -> list[dict[str, Any]]:
        """The stored forms as dicts, for stores that need objects (one orjson call)."""
        joined = self.joined
        if not joined:
            return []
        # "[l1,l2,...]": the lines as one JSON array, decoded in one call.
        decoded: list[dict[str, Any]] = orjson.loads(b"[" + joined[:-1].replace(b"\n", b",") + b"]")
        return decoded

    def select(self, keep: Sequence[bool]) -> EventBatch:
        """The events whose `keep` is true, in order (a store's dedupe)."""
        if all(keep):
            return self
        lines = self.lines()
        ids = self.event_ids
        types = self.event_types
        chosen = [index for index, wanted in enumerate(keep) if wanted]
        if not chosen:
            return EventBatch()
        return EventBatch(
            (
                EventBlock.of_lines(
                    b"".join([lines[index] + b"\n" for index in chosen]),
                    [ids[index] for index in chosen],
                    bytes(types[index] for index in chosen),
                ),
            )
        )
