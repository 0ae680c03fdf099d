"""Files: the default store, JSON Lines or length-delimited protobuf.

Layout: `<database.file.dir>/events-<UTC start>-<instance>-w<writer>-<seq>.jsonl`
(`.binpb` with `format: protobuf`: StoredAdEvent records, each prefixed by its
length as a varint)
(instance: random per store opening, since in a container every restart is pid 1),
one event per line. Each batch writer owns one open file, so writers never
contend; a file is rotated when it reaches `rotate_bytes` or is older than
`rotate_interval` (checked at each write). Lines are appended whole, with one
write per batch; a reader of a file still being written may see a trailing
partial line and should stop there. Encoding and I/O run in a worker thread so
the event loop keeps serving RPCs.

Idempotency: an event_id written within `dedupe_window` (at most
`dedupe_max_ids` ids) is not written again. At start-up the ids in files
modified within the window are read back, so the guarantee holds across
restarts and crashes too. Older ids are forgotten: a replay of an event from
longer ago than the window is written again. An id counts as a duplicate only
once its write succeeded: a batch holding an id that another write is still
writing waits for that write, and writes the id itself if that write failed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from google.protobuf.message import DecodeError

from aep.events.block import EventBatch
from aep.events.event_types import EVENT_TYPE_NAMES, EVENT_TYPE_NUMBERS
from aep.events.json_lines import decode_json_lines, encode_json_lines
from aep.events.schema import (
    STORED_FIELD_NAMES,
    STORED_FIELDS,
    EventRecord,
    FieldKind,
    stored_names,
)
from aep.events.varint import encode_varint
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import DatabaseSettings, FileFormat, FileStoreSettings, FsyncPolicy
from aep.storage.base import StoreError, WriteResult
from aep.storage.disk import file_stamp, fsync_directory, instance_token, write_all_parts


class JsonLinesCodec:
    """The stored form's JSON Lines (aep.events.json_lines), written as the batch holds it."""

    suffix = ".jsonl"
    encode = staticmethod(encode_json_lines)
    decode = staticmethod(decode_json_lines)

    @staticmethod
    def encode_batch(batch: EventBatch) -> list[bytes]:
        """The batch's blocks as they are: written with one writev, not joined first."""
        return [block.lines for block in batch.blocks]


_STORED_FIELD_COUNT = len(STORED_FIELDS)
_MAP_FIELDS = stored_names(FieldKind.STRING_MAP)
_EVENT_TYPE_FIELDS = stored_names(FieldKind.EVENT_TYPE)
_CopyFields = Callable[[pb.StoredAdEvent, EventRecord], None]


def _compile_copy_fields() -> _CopyFields:
    """`copy(message, record)`: one assignment per stored field but the maps.

    Generated from STORED_FIELDS at import: as fast as assignments written out
    by hand (a setattr loop per record is not), and a field added to the schema
    is encoded without an edit here.
    """
    lines = ["def copy(message, record):"]
    for field in STORED_FIELDS:
        if not field.name.isidentifier():
            raise ValueError(f"stored field {field.name!r} is not a protobuf field name")
        value = f"record[{field.name!r}]"
        if field.kind is FieldKind.EVENT_TYPE:
            value = f"type_numbers[{value}]"
        if field.kind is not FieldKind.STRING_MAP:
            lines.append(f"    message.{field.name} = {value}")
    namespace: dict[str, Any] = {"type_numbers": EVENT_TYPE_NUMBERS}
    # The source is built from the schema's own names only, never from input.
    exec("\n".join(lines), namespace)  # noqa: S102
    return cast(_CopyFields, namespace["copy"])


_copy_fields = _compile_copy_fields()


class ProtobufCodec:
    """Length-delimited adevents.v1.StoredAdEvent records (the JSON form's fields)."""

    suffix = ".binpb"

    @staticmethod
    def encode(records: Sequence[EventRecord]) -> bytes:
        """One message, reused: setting its fields costs half of building one per record."""
        parts: list[bytes] = []
        append = parts.append
        message = pb.StoredAdEvent()
        copy_fields = _copy_fields
        maps = [(name, getattr(message, name)) for name in _MAP_FIELDS]
        maps_set = False  # whether the maps may hold entries of a previous record
        for record in records:
            try:
                if len(record) != _STORED_FIELD_COUNT:
                    raise KeyError("not the stored form")
                # Every field is set for every record: nothing of the last one stays.
                copy_fields(message, record)
                if maps_set:
                    for _, entries in maps:
                        entries.clear()
                    maps_set = False
                for name, entries in maps:
                    record_entries = record[name]
                    if record_entries:
                        maps_set = True  # before update: it may fail half-way
                        entries.update(record_entries)
                body = message.SerializeToString()
            except (KeyError, TypeError, ValueError):
                # Not exactly the stored form (a partial record, an event type given
                # by number): the constructor takes it, or names what is wrong.
                body = pb.StoredAdEvent(**record).SerializeToString()
            append(encode_varint(len(body)))
            append(body)
        return b"".join(parts)

    @staticmethod
    def decode(data: bytes) -> Iterator[EventRecord]:
        """Every complete record; a truncated tail (a crash mid-write) ends the file."""
        position, end = 0, len(data)
        while position < end:
            length = shift = 0
            while position < end:
                byte = data[position]
                position += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                return
            if position + length > end:
                return
            try:
                message = pb.StoredAdEvent.FromString(data[position : position + length])
            except DecodeError:
                return
            position += length
            record: EventRecord = {name: getattr(message, name) for name in STORED_FIELD_NAMES}
            for name in _EVENT_TYPE_FIELDS:
                record[name] = EVENT_TYPE_NAMES[record[name]]
            for name in _MAP_FIELDS:
                record[name] = dict(record[name])
            yield record

    @classmethod
    def encode_batch(cls, batch: EventBatch) -> list[bytes]:
        return [cls.encode(batch.records())]


Codec = type[JsonLinesCodec] | type[ProtobufCodec]
CODECS: dict[FileFormat, Codec] = {
    FileFormat.JSONL: JsonLinesCodec,
    FileFormat.PROTOBUF: ProtobufCodec,
}


def read_records(path: Path) -> list[EventRecord]:
    """The events of one store file (either format, by its suffix)."""
    codec = ProtobufCodec if path.suffix == ProtobufCodec.suffix else JsonLinesCodec
    return list(codec.decode(path.read_bytes()))


Claim = bytes | list[str]
"""What a table hands back for the ids it took, to forget them by later: the
native IdSet's pack of their keys (bytes), or on a set the ids themselves."""


class IdTable(Protocol):
    """RecentIds' set of ids: the native IdSet (NativeIdTable), or a set (SetIdTable)."""

    def __len__(self) -> int: ...
    def claim_if_new(self, batch: EventBatch) -> Claim | None:
        """Takes the batch's ids if none is in the table and none repeats; else none (None)."""

    def fresh_mask(self, batch: EventBatch) -> list[bool]:
        """Per event: its id neither in the table nor an earlier event's."""

    def add_ids(self, event_ids: list[str]) -> Claim:
        """Takes the ids, those already in too."""

    def forget(self, claim: Claim) -> None:
        """Removes the ids of a claim."""


class NativeIdTable:
    """The native IdSet, keyed on the ids' stored bytes: a batch's ids are read out of
    its JSON Lines in C, so no event is a Python object (see id_set.c)."""

    def __init__(self, expected: int) -> None:
        from aep.events.codec._native import IdSet

        self._set = IdSet(expected)

    def __len__(self) -> int:
        return len(self._set)

    def claim_if_new(self, batch: EventBatch) -> Claim | None:
        return self._set.claim_lines(batch.parts)

    def fresh_mask(self, batch: EventBatch) -> list[bool]:
        return self._set.fresh_lines(batch.parts)

    def add_ids(self, event_ids: list[str]) -> Claim:
        return self._set.add_ids(event_ids)

    def forget(self, claim: Claim) -> None:
        assert isinstance(claim, bytes), "a NativeIdTable's claims are packs"
        self._set.discard_pack(claim)


class SetIdTable:
    """A set of the ids as str: the table without the extension.

    A set that churns (a batch in, the oldest out) rebuilds its whole table
    every so often, stalling the event loop: for 500,000 ids 5-20 ms every
    ~125,000 events. IdSet never rebuilds at a steady size."""

    def __init__(self) -> None:
        self._set: set[str] = set()

    def __len__(self) -> int:
        return len(self._set)

    def claim_if_new(self, batch: EventBatch) -> Claim | None:
        # New and distinct ids grow the set by exactly their number.
        ids = self._set
        event_ids = batch.event_ids
        if not ids.isdisjoint(event_ids):
            return None
        before = len(ids)
        ids.update(event_ids)
        if len(ids) - before == len(event_ids):
            return event_ids
        ids.difference_update(event_ids)  # an id repeats; none was recent: undone
        return None

    def fresh_mask(self, batch: EventBatch) -> list[bool]:
        mask: list[bool] = []
        seen: set[str] = set()
        recent = self._set
        for event_id in batch.event_ids:
            mask.append(event_id not in recent and event_id not in seen)
            seen.add(event_id)
        return mask

    def add_ids(self, event_ids: list[str]) -> Claim:
        self._set.update(event_ids)
        return event_ids

    def forget(self, claim: Claim) -> None:
        assert isinstance(claim, list), "a SetIdTable's claims are lists of ids"
        self._set.difference_update(claim)


def new_id_table(expected: int) -> IdTable:
    """The native IdSet when the extension is built, else a set."""
    try:
        return NativeIdTable(expected)
    except ImportError:
        return SetIdTable()


class RecentIds:
    """Ids written recently, forgotten by age and count (oldest batch first).

    A batch's ids are claimed (counted as recent from then on) right after the
    lookup that found them new, while their slots of the table are still in
    the CPU's cache (inserting them after the write, milliseconds later, cost a
    cache miss per id); confirmed when written, from then on aging out with
    the window; forgotten (new again) when the write failed."""

    def __init__(self, window: float, max_ids: int, table: IdTable | None = None) -> None:
        self._window = window
        self._max_ids = max_ids
        self._ids = new_id_table(max_ids) if table is None else table
        self._batches: deque[tuple[float, Claim]] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def claim_if_new(self, batch: EventBatch) -> Claim | None:
        """Claims the batch's ids if none is recent and none repeats; else claims
        none and returns None. (An empty claim is falsy but not None.)"""
        return self._ids.claim_if_new(batch)

    def fresh_mask(self, batch: EventBatch) -> list[bool]:
        """Per event: its id neither recent nor taken by an earlier one of the batch."""
        return self._ids.fresh_mask(batch)

    def add_ids(self, event_ids: list[str], at: float) -> None:
        """Ids written at `at` (found on disk at start-up), as if claimed and confirmed."""
        self.confirm(self._ids.add_ids(event_ids), at)

    def confirm(self, claim: Claim, at: float) -> None:
        """Claimed ids written at `at`: from now on they age out with the window."""
        self._batches.append((at, claim))
        self._evict(at)

    def forget(self, claim: Claim) -> None:
        """Claimed ids whose write failed: new again."""
        self._ids.forget(claim)

    def _evict(self, now: float) -> None:
        horizon = now - self._window
        batches = self._batches
        while batches and (batches[0][0] < horizon or len(self._ids) > self._max_ids):
            _, expired = batches.popleft()
            self._ids.forget(expired)


class _SegmentWriter:
    """One writer's current file. Used from one thread at a time."""

    def __init__(
        self, directory: Path, instance: str, index: int, settings: FileStoreSettings
    ) -> None:
        self._directory = directory
        self._instance = instance
        self._suffix = CODECS[settings.format].suffix
        self._index = index
        self._settings = settings
        self._fd: int | None = None
        self._opened_at = 0.0
        self._size = 0
        self._sequence = 0
        self._last_fsync = 0.0
        self.path: Path | None = None

    def append(self, parts: Sequence[bytes]) -> None:
        """Write whole lines (`parts` in order); runs in a worker thread, which only
        waits on syscalls."""
        now = time.time()
        if (
            self._fd is None
            or self._size >= self._settings.rotate_bytes
            or now - self._opened_at >= self._settings.rotate_interval
        ):
            self._rotate(now)
        fd = self._fd
        assert fd is not None
        try:
            write_all_parts(fd, parts)
        except OSError:
            # Cut a partial batch off again so the retry cannot leave half-lines
            # or events stored twice behind.
            os.ftruncate(fd, self._size)
            raise
        self._size += sum(len(part) for part in parts)
        policy = self._settings.fsync
        if policy is FsyncPolicy.BATCH or (
            policy is FsyncPolicy.INTERVAL
            and now - self._last_fsync >= self._settings.fsync_interval
        ):
            os.fsync(fd)
            self._last_fsync = now

    def _rotate(self, now: float) -> None:
        self.close()
        self._sequence += 1
        stamp = file_stamp(now)
        name = f"events-{stamp}-{self._instance}-w{self._index}-{self._sequence:06d}{self._suffix}"
        self.path = self._directory / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._opened_at = now
        self._size = 0
        if self._settings.fsync is not FsyncPolicy.NEVER:
            fsync_directory(self._directory)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._settings.fsync is not FsyncPolicy.NEVER or self._size:
                    os.fsync(fd)
            finally:
                os.close(fd)


class FileStore:
    """EventStore writing JSON Lines files; see the module docstring."""

    def __init__(self, settings: FileStoreSettings, *, writer_count: int) -> None:
        self._settings = settings
        self._directory = settings.dir
        instance = instance_token()
        self._writers = [
            _SegmentWriter(settings.dir, instance, index, settings) for index in range(writer_count)
        ]
        self._free: asyncio.Queue[_SegmentWriter] = asyncio.Queue()
        self._recent = RecentIds(settings.dedupe_window, settings.dedupe_max_ids)
        # Each write in flight's claim on its ids (done when the write ends). An
        # id is claimed by one write at a time. Claimed ids are in _recent from
        # the claim on, so an id that is not recent is neither written nor being
        # written: the common case needs no other set.
        self._claims: dict[asyncio.Future[None], tuple[EventBatch, Claim]] = {}
        self._codec = CODECS[settings.format]

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, worker_count: int) -> FileStore:
        return cls(settings.file, writer_count=worker_count)

    @property
    def name(self) -> str:
        return "file"

    async def open(self) -> None:
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._load_recent_ids)
            await self.ping()
        except OSError as error:
            raise StoreError(f"file store at {self._directory}: {error}") from error
        for writer in self._writers:
            self._free.put_nowait(writer)

    def _load_recent_ids(self) -> None:
        horizon = time.time() - self._settings.dedupe_window
        recent = []
        for path in self._directory.glob("events-*"):  # both formats: the format may change
            modified = path.stat().st_mtime
            if modified >= horizon and path.suffix in (".jsonl", ".binpb"):
                recent.append((modified, path))
        for modified, path in sorted(recent):  # oldest first: the newest survive the count bound
            ids = [str(record.get("event_id")) for record in read_records(path)]
            self._recent.add_ids(ids, modified)

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        # Claimed until the write ends, so a concurrent batch with these ids
        # waits for it instead of writing them too or calling them duplicates.
        fresh, claim = await self._claim_new_events(batch)
        if not fresh.count:
            self._release(claim)
            return WriteResult(written=0, duplicates=batch.count)
        try:
            # Encoded here (JSON Lines: the blocks as they are), not in the worker
            # thread: that holds the GIL, and a CPU-bound thread would make the
            # event loop wait for it.
            parts = self._codec.encode_batch(fresh)
            writer = await self._free.get()
        except BaseException:
            self._release(claim)
            raise
        append = asyncio.ensure_future(asyncio.to_thread(writer.append, parts))
        # The bookkeeping runs when the thread ends, even if this call is
        # cancelled first: the writer is not reused and the ids are not released
        # while the thread may still be writing them.
        append.add_done_callback(lambda done: self._appended(done, writer, claim))
        try:
            await asyncio.shield(append)
        except OSError as error:
            raise StoreError(f"file store: writing {writer.path}: {error}") from error
        return WriteResult(written=fresh.count, duplicates=batch.count - fresh.count)

    async def _claim_new_events(self, batch: EventBatch) -> tuple[EventBatch, asyncio.Future[None]]:
        """The events to write, claimed: not written recently, not taken by an
        earlier event of the batch, after waiting for the writes still in flight
        of any of their ids. Returns them with their claim, to be released."""
        recent = self._recent
        while True:
            claimed = recent.claim_if_new(batch)
            if claimed is not None:
                return batch, self._new_claim(batch, claimed)
            # Some id is recent or repeats. Ids of a write in flight: whether they
            # are duplicates is known once it ended (written: recent; failed: new
            # again), so wait for it first.
            wanted = set(batch.event_ids)
            in_flight = [
                claim
                for claim, (writing, _) in self._claims.items()
                if not wanted.isdisjoint(writing.event_ids)
            ]
            if in_flight:
                await asyncio.wait(in_flight)
                continue
            fresh = batch.select(recent.fresh_mask(batch))
            claimed = recent.claim_if_new(fresh)  # distinct and new: fresh_mask keeps firsts
            assert claimed is not None, "the fresh events of a batch are new and distinct"
            return fresh, self._new_claim(fresh, claimed)

    def _new_claim(self, batch: EventBatch, claimed: Claim) -> asyncio.Future[None]:
        claim: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claims[claim] = (batch, claimed)
        return claim

    def _appended(
        self, append: asyncio.Future[None], writer: _SegmentWriter, claim: asyncio.Future[None]
    ) -> None:
        self._free.put_nowait(writer)
        written = not append.cancelled() and append.exception() is None
        if written:
            self._recent.confirm(self._claims[claim][1], time.time())
        self._release(claim, written=written)

    def _release(self, claim: asyncio.Future[None], *, written: bool = False) -> None:
        """The claim's ids are no longer being written; unless written, new again."""
        _, claimed = self._claims.pop(claim)
        if not written:
            self._recent.forget(claimed)
        claim.set_result(None)

    async def ping(self) -> None:
        if not os.access(self._directory, os.W_OK):
            raise StoreError(f"file store: {self._directory} is not writable")

    async def close(self) -> None:
        for writer in self._writers:
            await asyncio.to_thread(writer.close)
