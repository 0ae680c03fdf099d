from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from aep.events.block import EventBatch, EventBlock
from aep.events.codec import RequestKind, native_codec_problem
from aep.events.event_types import VALID_EVENT_TYPE_NAMES
from aep.events.schema import (
    STORED_FIELD_NAMES,
    STORED_FIELDS,
    EventRecord,
    FieldKind,
    format_epoch,
)
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import FileFormat, FileStoreSettings, FsyncPolicy, ValidationSettings
from aep.storage.base import StoreError, WriteResult
from aep.storage.file import FileStore, read_records
from tests.helpers.full_disk import small_tmpfs
from tests.helpers.support import batch_of, block_of, full_stored_record, stored_events


def settings(directory: Path, **overrides: object) -> FileStoreSettings:
    return FileStoreSettings.model_validate({"dir": directory, **overrides})


def batch(start: int, count: int) -> list[EventRecord]:
    return [
        {"event_id": f"e{i}", "user_id": "u", "ad_id": "a", "event_type": "EVENT_TYPE_CLICK"}
        for i in range(start, start + count)
    ]


async def open_store(directory: Path, writers: int = 2, **overrides: object) -> FileStore:
    store = FileStore(settings(directory, **overrides), writer_count=writers)
    await store.open()
    return store


async def test_writes_json_lines_and_reads_back(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    result = await store.write_batch(batch_of(batch(0, 10)))
    await store.close()
    assert (result.written, result.duplicates) == (10, 0)
    events = stored_events(tmp_path)
    assert [e["event_id"] for e in events] == [f"e{i}" for i in range(10)]
    assert all(path.name.endswith(".jsonl") for path in tmp_path.iterdir())


async def test_duplicates_within_and_across_batches_are_not_written(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    first = await store.write_batch(batch_of([*batch(0, 5), *batch(0, 2)]))
    second = await store.write_batch(batch_of(batch(3, 5)))
    await store.close()
    assert (first.written, first.duplicates) == (5, 2)
    assert (second.written, second.duplicates) == (3, 2)
    ids = [str(e["event_id"]) for e in stored_events(tmp_path)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(8))


async def test_dedupe_survives_a_restart_within_the_window(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.write_batch(batch_of(batch(0, 100)))
    await store.close()
    restarted = await open_store(tmp_path)
    result = await restarted.write_batch(batch_of(batch(50, 100)))
    await restarted.close()
    assert (result.written, result.duplicates) == (50, 50)
    ids = [e["event_id"] for e in stored_events(tmp_path)]
    assert len(ids) == len(set(ids)) == 150


async def test_ids_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    store = await open_store(tmp_path, dedupe_window=0.05)
    await store.write_batch(batch_of(batch(0, 3)))
    time.sleep(0.1)
    await store.write_batch(batch_of(batch(100, 1)))  # moves time on; evicts the old batch
    again = await store.write_batch(batch_of(batch(0, 3)))
    await store.close()
    assert again.written == 3


async def test_dedupe_is_bounded_by_count(tmp_path: Path) -> None:
    store = await open_store(tmp_path, dedupe_max_ids=10)
    for start in range(0, 100, 5):
        await store.write_batch(batch_of(batch(start, 5)))
    again = await store.write_batch(batch_of(batch(0, 5)))
    await store.close()
    assert again.written == 5  # the oldest ids were forgotten


async def test_a_crash_leftover_partial_line_is_tolerated(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.write_batch(batch_of(batch(0, 3)))
    await store.close()
    victim = next(tmp_path.glob("events-*.jsonl"))
    with victim.open("ab") as handle:
        handle.write(b'{"event_id":"e3","user_')  # what a crash mid-write leaves
    restarted = await open_store(tmp_path)
    result = await restarted.write_batch(batch_of(batch(0, 4)))
    await restarted.close()
    assert (result.written, result.duplicates) == (1, 3)


async def test_rotates_by_size(tmp_path: Path) -> None:
    store = await open_store(tmp_path, writers=1, rotate_bytes=1024)
    for start in range(0, 200, 10):
        await store.write_batch(batch_of(batch(start, 10)))
    await store.close()
    files = sorted(tmp_path.glob("events-*.jsonl"))
    assert len(files) > 3
    # A file is rotated at the first write after it reached the bound.
    assert all(path.stat().st_size < 1024 + 1000 for path in files)
    assert len(stored_events(tmp_path)) == 200


async def test_rotates_by_time(tmp_path: Path) -> None:
    store = await open_store(tmp_path, writers=1, rotate_interval=0.05)
    await store.write_batch(batch_of(batch(0, 1)))
    time.sleep(0.1)
    await store.write_batch(batch_of(batch(1, 1)))
    await store.close()
    assert len(list(tmp_path.glob("events-*.jsonl"))) == 2


async def test_each_writer_has_its_own_file(tmp_path: Path) -> None:
    import asyncio

    store = await open_store(tmp_path, writers=3)
    await asyncio.gather(
        *(store.write_batch(batch_of(batch(start * 10, 10))) for start in range(9))
    )
    await store.close()
    assert 1 <= len(list(tmp_path.glob("events-*.jsonl"))) <= 3
    assert len(stored_events(tmp_path)) == 90


@pytest.mark.parametrize("policy", list(FsyncPolicy))
async def test_every_fsync_policy_stores_the_events(tmp_path: Path, policy: FsyncPolicy) -> None:
    store = await open_store(tmp_path, fsync=policy)
    await store.write_batch(batch_of(batch(0, 5)))
    await store.close()
    assert len(stored_events(tmp_path)) == 5


async def test_unwritable_directory_fails_to_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = FileStore(settings(blocker / "events"), writer_count=1)
    with pytest.raises(StoreError, match="file store"):
        await store.open()


async def test_lines_are_the_stored_form(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    record: EventRecord = {"event_id": "x", "attributes": {"k": "v"}, "price_micros": 5}
    await store.write_batch(batch_of([record]))
    await store.close()
    line = next(tmp_path.glob("*.jsonl")).read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == record
    assert oct(os.stat(next(tmp_path.glob("*.jsonl"))).st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("file_format", list(FileFormat))
async def test_both_formats_round_trip_and_dedupe_across_restarts(
    tmp_path: Path, file_format: FileFormat
) -> None:
    """Every field of the schema, each set to a value other than its default."""
    full = full_stored_record()
    store = await open_store(tmp_path, format=file_format)
    await store.write_batch(batch_of([full]))
    await store.close()
    [path] = tmp_path.glob("events-*")
    assert path.suffix == (".jsonl" if file_format is FileFormat.JSONL else ".binpb")
    assert read_records(path) == [full]
    assert list(read_records(path)[0]) == list(STORED_FIELD_NAMES)
    restarted = await open_store(tmp_path, format=file_format)
    again = await restarted.write_batch(batch_of([full]))
    await restarted.close()
    assert (again.written, again.duplicates) == (0, 1)


async def test_a_truncated_binary_record_is_tolerated(tmp_path: Path) -> None:
    store = await open_store(tmp_path, format=FileFormat.PROTOBUF)
    await store.write_batch(batch_of(batch(0, 3)))
    await store.close()
    [path] = tmp_path.glob("events-*.binpb")
    data = path.read_bytes()
    path.write_bytes(data + data[:7])  # the start of a fourth record, cut off by a crash
    assert [r["event_id"] for r in read_records(path)] == ["e0", "e1", "e2"]
    restarted = await open_store(tmp_path, format=FileFormat.PROTOBUF)
    result = await restarted.write_batch(batch_of(batch(0, 4)))
    await restarted.close()
    assert (result.written, result.duplicates) == (1, 3)


def test_binary_is_smaller_than_json_lines(tmp_path: Path) -> None:
    from aep.storage.file import JsonLinesCodec, ProtobufCodec

    records = batch(0, 100)
    assert len(ProtobufCodec.encode(records)) < len(JsonLinesCodec.encode(records)) / 2


hostile_text = st.lists(
    st.sampled_from(['"', "\\", "{", "}", ",", ":", "\n", "event_id", '},{"event_id":', "é"]),
    max_size=12,
).map("".join)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "event_id": hostile_text,
                "user_id": hostile_text,
                "attributes": st.dictionaries(hostile_text, hostile_text, max_size=3),
            }
        ),
        max_size=20,
    )
)
def test_json_lines_of_a_batch_are_one_line_per_record(records: list[EventRecord]) -> None:
    """Strings full of JSON syntax never confuse the one-call batch encoding."""
    from aep.storage.file import JsonLinesCodec

    encoded = JsonLinesCodec.encode(records)
    assert encoded == b"".join(orjson.dumps(record) + b"\n" for record in records)


def test_records_not_starting_with_event_id_still_get_a_line_each() -> None:
    from aep.storage.file import JsonLinesCodec

    records: list[EventRecord] = [{"user_id": "u", "event_id": str(index)} for index in range(5)]
    assert JsonLinesCodec.encode(records).splitlines() == [orjson.dumps(r) for r in records]


any_text = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates
# Any value of each kind the binary format can hold (a new kind fails: KeyError).
value_of_kind: dict[FieldKind, st.SearchStrategy[object]] = {
    FieldKind.ID: any_text,
    FieldKind.TEXT: any_text,
    FieldKind.EVENT_TYPE: st.sampled_from(list(VALID_EVENT_TYPE_NAMES.values())),
    FieldKind.TIMESTAMP: any_text,
    FieldKind.INT64: st.integers(0, 2**63 - 1),
    FieldKind.STRING_MAP: st.dictionaries(any_text, any_text, max_size=3),
}
stored_form = st.fixed_dictionaries(
    {field.name: value_of_kind[field.kind] for field in STORED_FIELDS}
)
# Not exactly the stored form: some keys missing, or the event type as a number.
other_record = st.one_of(
    st.fixed_dictionaries({"event_id": any_text}, optional={"attributes": st.just({"k": "v"})}),
    stored_form.map(lambda record: {**record, "event_type": 2}),
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(stored_form, stored_form, other_record), max_size=12))
def test_binary_records_hold_exactly_what_each_record_says(records: list[EventRecord]) -> None:
    """The reused message never carries a field or attribute over to the next record."""
    from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]

    from aep.proto.adevents.v1 import ad_events_pb2 as pb
    from aep.storage.file import ProtobufCodec

    data = ProtobufCodec.encode(records)
    position = 0
    for record in records:
        length, position = _DecodeVarint(data, position)
        stored = pb.StoredAdEvent.FromString(data[position : position + length])
        position += length
        assert stored == pb.StoredAdEvent(**record)
    assert position == len(data)
    assert [r["event_id"] for r in ProtobufCodec.decode(data)] == [r["event_id"] for r in records]


def _large_batch(start: int, count: int, size: int) -> list[EventRecord]:
    """Events with the ids of batch(start, count), each padded to about `size` bytes."""
    return [{**record, "attributes": {"pad": "x" * size}} for record in batch(start, count)]


async def _write_concurrently(
    store: FileStore, first: list[EventRecord], second: list[EventRecord]
) -> list[WriteResult | BaseException]:
    """Two writes racing like two pipeline writers: the second starts while the first is
    in its worker thread."""
    import asyncio

    return list(
        await asyncio.gather(
            store.write_batch(batch_of(first)),
            store.write_batch(batch_of(second)),
            return_exceptions=True,
        )
    )


def _outcome(result: WriteResult | BaseException) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}"
    return f"written={result.written} duplicates={result.duplicates}"


async def test_a_retry_racing_a_failing_write_is_not_a_duplicate(tmp_path: Path) -> None:
    """Disk full: the first write fails with ENOSPC; a concurrent retry of the same ids
    must fail too (it is not answered "duplicate" for events that were never written)."""
    with small_tmpfs(tmp_path / "disk") as disk:
        store = await open_store(disk.root / "events", writers=2)
        disk.fill()
        first, second = await _write_concurrently(store, batch(0, 10), batch(0, 10))
        stored = len(stored_events(disk.root / "events"))
        await store.close()
    duplicates = 0 if isinstance(second, BaseException) else second.duplicates
    print(
        f"racing retry on a full disk: first {_outcome(first)}, second {_outcome(second)}; "
        f"acknowledged={0 if isinstance(second, BaseException) else 10} stored={stored} "
        f"duplicates={duplicates} lost={duplicates - stored if duplicates > stored else 0}"
    )
    assert isinstance(first, StoreError), first
    assert isinstance(second, StoreError), f"the retry was answered {_outcome(second)}"
    assert stored == 0


async def test_a_retry_racing_a_failing_write_writes_the_events_itself(tmp_path: Path) -> None:
    """The first write does not fit the space left and fails; the retry of the same ids
    (small enough to fit) waits for it, then writes them: nothing is counted duplicate."""
    with small_tmpfs(tmp_path / "disk") as disk:
        store = await open_store(disk.root / "events", writers=2)
        disk.fill(leave_bytes=64 * 1024)
        first, second = await _write_concurrently(store, _large_batch(0, 10, 100_000), batch(0, 10))
        ids = sorted(str(e["event_id"]) for e in stored_events(disk.root / "events"))
        await store.close()
    print(
        f"racing retry, first too big for the disk: first {_outcome(first)}, "
        f"second {_outcome(second)}; stored={len(ids)}"
    )
    assert isinstance(first, StoreError), first
    assert not isinstance(second, BaseException), second
    assert (second.written, second.duplicates) == (10, 0)
    assert ids == sorted(f"e{i}" for i in range(10))


async def test_a_batch_of_many_blocks_cut_off_by_a_full_disk_leaves_whole_lines(
    tmp_path: Path,
) -> None:
    """A batch of 12 blocks goes to the file with one writev; the disk fills inside
    it. The part that reached the file is cut off again (no half line, no event
    of the failed batch), and the retry once there is room writes each event once."""
    with small_tmpfs(tmp_path / "disk") as disk:
        store = await open_store(disk.root / "events", writers=1)
        await store.write_batch(batch_of(batch(0, 5)))  # the file exists and holds 5
        blocks = [block_of(_large_batch(100 + 10 * n, 10, 2_000)) for n in range(12)]
        disk.fill(leave_bytes=96 * 1024)  # room for about 4 of the 12 blocks
        with pytest.raises(StoreError, match="No space left"):
            await store.write_batch(EventBatch(blocks))
        after_failure = [str(e["event_id"]) for e in stored_events(disk.root / "events")]
        raw = b"".join(path.read_bytes() for path in (disk.root / "events").glob("events-*"))
        disk.free()
        retried = await store.write_batch(EventBatch(blocks))
        ids = [str(e["event_id"]) for e in stored_events(disk.root / "events")]
        await store.close()
    assert after_failure == [f"e{i}" for i in range(5)]
    assert raw.endswith(b"\n") and raw.count(b"\n") == 5
    assert (retried.written, retried.duplicates) == (120, 0)
    assert sorted(ids) == sorted([f"e{i}" for i in range(5)] + [f"e{i}" for i in range(100, 220)])


async def test_a_retry_racing_a_successful_write_is_a_duplicate(tmp_path: Path) -> None:
    store = await open_store(tmp_path, writers=2)
    first, second = await _write_concurrently(store, batch(0, 10), batch(5, 10))
    await store.close()
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert (first.written, first.duplicates) == (10, 0)
    assert (second.written, second.duplicates) == (5, 5)
    ids = [str(e["event_id"]) for e in stored_events(tmp_path)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(15))


async def test_a_racing_batch_with_repeated_ids_waits_then_writes_each_new_id_once(
    tmp_path: Path,
) -> None:
    """The second batch overlaps the write in flight and repeats its own ids: it
    waits for the first, then writes only its ids that are new, each once."""
    store = await open_store(tmp_path, writers=2)
    repeated = batch(5, 10) + batch(12, 6)  # e12..e14 twice, e15..e17 once
    first, second = await _write_concurrently(store, batch(0, 10), repeated)
    third = await store.write_batch(batch_of(batch(0, 20)))
    await store.close()
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert (first.written, first.duplicates) == (10, 0)
    assert (second.written, second.duplicates) == (8, 8)  # e10..e17 new
    assert (third.written, third.duplicates) == (2, 18)  # e18, e19
    ids = [str(e["event_id"]) for e in stored_events(tmp_path)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(20))
    assert not store._claims  # every claim released


async def test_a_write_cancelled_before_it_had_a_writer_leaves_its_ids_new(
    tmp_path: Path,
) -> None:
    """Ids count as recent from their claim on; a batch cancelled while every writer
    is busy was never written, so the same ids are written by the next batch."""
    import asyncio

    store = await open_store(tmp_path, writers=1)
    busy = await store._free.get()  # the only writer, taken
    waiting = asyncio.ensure_future(store.write_batch(batch_of(batch(0, 10))))
    await asyncio.sleep(0.05)
    assert not waiting.done(), "it waits for a free writer"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    store._free.put_nowait(busy)
    again = await store.write_batch(batch_of(batch(0, 10)))
    await store.close()
    assert (again.written, again.duplicates) == (10, 0)
    assert sorted(str(e["event_id"]) for e in stored_events(tmp_path)) == sorted(
        f"e{i}" for i in range(10)
    )
    assert not store._claims


def _native_block(event_ids: list[str]) -> EventBlock:
    """The block the native codec makes of a batch with these client ids."""
    from aep.events.codec.native import NativeCodec

    now = time.time()
    events = []
    for event_id in event_ids:
        event = pb.AdEvent(
            event_id=event_id, user_id="u", ad_id="a", event_type=pb.EVENT_TYPE_CLICK
        )
        event.timestamp.FromNanoseconds(int((now - 1) * 1e9))
        events.append(event)
    raw = pb.SendAdEventBatchRequest(events=events).SerializeToString()
    codec = NativeCodec(ValidationSettings(), 1000, records=False)
    decoded = codec.decode(RequestKind.BATCH, raw, now, format_epoch(now))
    assert decoded.verdicts.rejected == []
    return decoded.block()


@pytest.mark.skipif(native_codec_problem() is not None, reason="native extension not built")
async def test_native_blocks_are_deduped_from_their_lines_without_a_str_per_event(
    tmp_path: Path,
) -> None:
    """The store claims a native block's ids out of its JSON Lines (IdSet.claim_lines):
    ids that escape in JSON are told apart and matched as the ids are, and no event id
    becomes a str on the way (the block never read its ids out)."""
    ids = ['q"1', "q\\1", "q\\\\1", "tab\t1", "é1", "x" * 100]
    first, again = _native_block(ids), _native_block([*ids[:3], "new", ids[3]])
    store = await open_store(tmp_path)
    written = await store.write_batch(EventBatch((first,)))
    repeated = await store.write_batch(EventBatch((again,)))
    await store.close()
    assert (written.written, written.duplicates) == (6, 0)
    assert (repeated.written, repeated.duplicates) == (1, 4)
    assert first._event_ids is None  # read by the store straight from the lines
    assert sorted(str(e["event_id"]) for e in stored_events(tmp_path)) == sorted([*ids, "new"])
