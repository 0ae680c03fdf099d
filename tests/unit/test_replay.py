"""replay-dlq against a real file store (the Redis variant runs in the integration tests)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson
import pytest

from aep.events.block import EventBatch
from aep.events.schema import EventRecord
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.settings import Settings, load_settings
from aep.storage import EventStore, WriteResult
from aep.tools.dead_letter_replay import (
    CLAIMED_DIR,
    REJECTED_DIR,
    REPLAYED_DIR,
    replay_dead_letters,
)
from tests.helpers.dead_letters import stored_record, stored_records
from tests.helpers.support import batch_of, stored_events


def settings_for(tmp_path: Path, **environ: str) -> Settings:
    return load_settings(
        environ={
            "AEP_DATABASE_FILE_DIR": str(tmp_path / "events"),
            "AEP_DEAD_LETTER_DIR": str(tmp_path / "dlq"),
            "AEP_BATCH_SIZE": "7",
            "AEP_RETRY_MAX_ATTEMPTS": "2",
            "AEP_RETRY_INITIAL_BACKOFF": "1ms",
            **environ,
        }
    )


def records(start: int, count: int) -> list[EventRecord]:
    return stored_records(start, count)


async def dead_letter(directory: Path, batch: list[EventRecord]) -> Path:
    queue = DeadLetterQueue(directory)
    await queue.append(batch_of(batch), "StoreError: down", attempts=5)
    assert queue.path is not None
    return queue.path


async def replay(settings: Settings, *paths: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = await replay_dead_letters(settings, paths, out=out)
    return code, out.getvalue()


async def test_replays_every_file_once_then_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = await dead_letter(tmp_path / "dlq", records(0, 20))
    await dead_letter(tmp_path / "dlq", records(20, 5))
    code, output = await replay(settings)
    assert code == 0, output
    assert "2 of 2 files replayed to the file store: 25 events, 25 written, 0 duplicates" in output
    ids = sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events"))
    assert ids == sorted(f"e{i}" for i in range(25))
    assert not first.exists()
    assert len(list((tmp_path / "dlq" / REPLAYED_DIR).glob("*.jsonl"))) == 2
    again_code, again = await replay(settings)
    assert again_code == 0
    assert "0 of 0 files replayed" in again
    assert len(stored_events(tmp_path / "events")) == 25


async def test_events_already_in_the_store_count_as_duplicates(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    await dead_letter(tmp_path / "dlq", records(0, 10))
    assert (await replay(settings))[0] == 0
    # The same events dead-lettered again (a batch that did reach the store).
    path = await dead_letter(tmp_path / "dlq", records(5, 10))
    code, output = await replay(settings, path)
    assert code == 0
    assert "10 events, 5 written, 5 duplicates" in output
    ids = [str(e["event_id"]) for e in stored_events(tmp_path / "events")]
    assert sorted(ids) == sorted(f"e{i}" for i in range(15))


async def test_unreadable_lines_are_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    path = await dead_letter(tmp_path / "dlq", records(0, 3))
    with path.open("ab") as handle:
        handle.write(b'{"reason": "x", "event": {"user_id": "no id"}}\n{"reason": "trunc')
    code, output = await replay(settings)
    assert code == 1
    assert "3 events, 3 written" in output
    assert "2 lines not replayed" in output
    assert len(stored_events(tmp_path / "events")) == 3


async def test_a_file_that_cannot_be_written_stays_claimed_for_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await dead_letter(tmp_path / "dlq", records(0, 4))
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    broken = settings_for(tmp_path, AEP_DATABASE_FILE_DIR=str(blocker))
    # The file store opens, then every write fails: the directory turns into a file.
    from aep.storage.file import FileStore

    original_open = FileStore.open

    async def open_then_break(self: FileStore) -> None:
        await original_open(self)
        blocker.rmdir()
        blocker.write_text("not a directory any more")

    FileStore.open = open_then_break  # type: ignore[method-assign]
    try:
        code, _ = await replay(broken)
    finally:
        FileStore.open = original_open  # type: ignore[method-assign]
    assert code == 1
    assert "stays in" in capsys.readouterr().err
    claimed = list((tmp_path / "dlq" / CLAIMED_DIR).glob("*.jsonl"))
    assert len(claimed) == 1
    assert not list((tmp_path / "dlq").glob("dead-letter-*.jsonl"))
    code, output = await replay(settings_for(tmp_path))
    assert code == 0
    assert "1 of 1 files replayed" in output
    assert len(stored_events(tmp_path / "events")) == 4


async def test_appends_after_the_claim_go_to_a_new_file(tmp_path: Path) -> None:
    """A server that keeps dead-lettering while replay-dlq runs strands nothing."""
    queue = DeadLetterQueue(tmp_path / "dlq")
    await queue.append(batch_of(records(0, 2)), "down", attempts=5)
    settings = settings_for(tmp_path)
    code, _ = await replay(settings)
    assert code == 0
    await queue.append(batch_of(records(2, 3)), "down", attempts=5)  # same queue, same file name
    pending = list((tmp_path / "dlq").glob("dead-letter-*.jsonl"))
    assert len(pending) == 1
    lines = [orjson.loads(line) for line in pending[0].read_bytes().splitlines()]
    assert [line["event"]["event_id"] for line in lines] == ["e2", "e3", "e4"]
    code, output = await replay(settings)
    assert code == 0
    assert "3 events, 3 written" in output


async def test_concurrent_appends_during_replays_lose_nothing(tmp_path: Path) -> None:
    queue = DeadLetterQueue(tmp_path / "dlq")
    settings = settings_for(tmp_path)

    async def keep_appending() -> None:
        for start in range(0, 400, 4):
            await queue.append(batch_of(records(start, 4)), "down", attempts=5)

    appender = asyncio.create_task(keep_appending())
    while not appender.done():
        assert (await replay(settings))[0] == 0
    await appender
    assert (await replay(settings))[0] == 0
    ids = [str(e["event_id"]) for e in stored_events(tmp_path / "events")]
    assert sorted(ids) == sorted(f"e{i}" for i in range(400))


async def test_a_missing_path_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = await replay(settings_for(tmp_path), tmp_path / "nope.jsonl")
    assert code == 1
    # One line naming the path as the user typed it, not a Python list repr.
    assert capsys.readouterr().err == (
        f"replay-dlq: no such file or directory: {tmp_path / 'nope.jsonl'}\n"
    )


def entry_line(record: EventRecord) -> bytes:
    """One dead-letter line as the server writes it."""
    entry = {"reason": "StoreError: down", "failed_at": "2026-01-02T03:04:07.000000Z"}
    return orjson.dumps({**entry, "attempts": 5, "event": record}) + b"\n"


def rejected_lines(tmp_path: Path) -> list[bytes]:
    return [
        line
        for path in sorted((tmp_path / "dlq" / REJECTED_DIR).glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


async def test_torn_fragments_in_the_middle_and_at_the_end_lose_no_complete_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file an append was cut short in (a crash, or an older server on a full disk)."""
    settings = settings_for(tmp_path)
    torn = entry_line(stored_record(90))[:57]
    glued = entry_line(stored_record(91))[:120]
    (tmp_path / "dlq").mkdir()
    path = tmp_path / "dlq" / "dead-letter-20260102T030405Z-0badc0de.jsonl"
    path.write_bytes(
        entry_line(stored_record(0))
        + torn
        + b"\n"  # a torn line of its own
        + entry_line(stored_record(1))
        + glued  # the next entry glued onto a torn one: the entry is whole
        + entry_line(stored_record(2))
        + entry_line(stored_record(3))
        + b"\x00\x00garbage\n"
        + entry_line(stored_record(4))
        + entry_line(stored_record(5))[:-30]  # a torn tail
    )
    code, output = await replay(settings)
    stored = sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events"))
    err = capsys.readouterr().err
    print(f"torn fragments: stored={len(stored)} of 5 whole entries; rejected lines:\n{err}")
    assert code == 1
    assert stored == ["e0", "e1", "e2", "e3", "e4"]
    assert "5 events, 5 written" in output
    for line in (2, 4, 6, 8):
        assert f".jsonl:{line}: " in err
    assert rejected_lines(tmp_path) == [
        torn,
        glued,
        b"\x00\x00garbage",
        entry_line(stored_record(5))[:-30],
    ]
    assert (await replay(settings))[0] == 0  # nothing left to retry forever


async def test_an_append_after_a_torn_line_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    queue = DeadLetterQueue(tmp_path / "dlq")
    await queue.append(batch_of(records(0, 2)), "down", attempts=5)
    assert queue.path is not None
    with queue.path.open("ab") as handle:  # a crash mid-append
        handle.write(entry_line(stored_record(50))[:40])
    await queue.append(batch_of(records(2, 3)), "down", attempts=5)
    code, output = await replay(settings_for(tmp_path))
    stored = sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events"))
    assert stored == [f"e{i}" for i in range(5)]
    assert code == 1  # the torn line is reported and kept
    assert "1 lines not replayed" in output


async def test_a_line_the_protobuf_store_cannot_encode_is_reported_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path, AEP_DATABASE_FILE_FORMAT="protobuf")
    bogus = entry_line(stored_record(3, bogus_field="x"))
    (tmp_path / "dlq").mkdir()
    path = tmp_path / "dlq" / "dead-letter-20260102T030405Z-0badc0de.jsonl"
    path.write_bytes(
        b"".join(entry_line(r) for r in records(0, 3))
        + bogus
        + b"".join(entry_line(r) for r in records(4, 2))
    )
    code, output = await replay(settings)
    err = capsys.readouterr().err
    assert code == 1, output
    assert ".jsonl:4: " in err and "bogus_field" in err
    stored = sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events"))
    assert stored == ["e0", "e1", "e2", "e4", "e5"]
    assert rejected_lines(tmp_path) == [bogus.rstrip(b"\n")]
    again, again_output = await replay(settings)
    assert again == 0, again_output
    assert "0 of 0 files replayed" in again_output


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"event_id": "x"}, "missing user_id"),
        (stored_record(1, user_id=7), "user_id"),
        (stored_record(1, event_type="CLICK"), "event_type"),
        (stored_record(1, event_type="EVENT_TYPE_UNSPECIFIED"), "event_type"),
        (stored_record(1, timestamp="yesterday"), "timestamp"),
        (stored_record(1, price_micros="12"), "price_micros"),
        (stored_record(1, price_micros=2**63), "int64"),
        (stored_record(1, attributes={"k": 1}), "attributes"),
        (stored_record(1, bogus_field="x"), "bogus_field"),
        (
            {k: v for k, v in stored_record(1).items() if k != "received_at"},
            "missing received_at",
        ),
    ],
    ids=[
        "id-only",
        "user-id-type",
        "event-type-name",
        "event-type-unspecified",
        "timestamp",
        "price-type",
        "price-range",
        "attribute-type",
        "unknown-key",
        "no-received-at",
    ],
)
async def test_records_not_in_the_stored_form_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], event: EventRecord, reason: str
) -> None:
    (tmp_path / "dlq").mkdir()
    path = tmp_path / "dlq" / "dead-letter-20260102T030405Z-0badc0de.jsonl"
    path.write_bytes(entry_line(stored_record(0)) + entry_line(event))
    code, _ = await replay(settings_for(tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert ".jsonl:2: " in err and reason in err, err
    assert [e["event_id"] for e in stored_events(tmp_path / "events")] == ["e0"]
    assert len(rejected_lines(tmp_path)) == 1


async def test_older_entries_without_the_optional_fields_are_replayed_complete(
    tmp_path: Path,
) -> None:
    required = ("event_id", "user_id", "ad_id", "event_type", "timestamp", "received_at")
    old = {key: stored_record(0)[key] for key in required}
    (tmp_path / "dlq").mkdir()
    path = tmp_path / "dlq" / "dead-letter-20260102T030405Z-0badc0de.jsonl"
    path.write_bytes(entry_line(old))
    code, output = await replay(settings_for(tmp_path))
    assert code == 0, output
    (event,) = stored_events(tmp_path / "events")
    assert event == {
        **old,
        "campaign_id": "",
        "creative_id": "",
        "placement_id": "",
        "publisher_id": "",
        "price_micros": 0,
        "currency": "",
        "attributes": {},
    }


async def test_a_batch_the_store_refuses_for_its_content_is_written_event_by_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a store raises besides StoreError costs only the events it is about."""
    from aep.storage import create_store
    from aep.tools import dead_letter_replay as replay_module

    class Picky:
        """The real file store, refusing any batch that holds e3 (as a codec would)."""

        def __init__(self, inner: EventStore) -> None:
            self.inner = inner
            self.name = inner.name

        async def open(self) -> None:
            await self.inner.open()

        async def write_batch(self, batch: EventBatch) -> WriteResult:
            if "e3" in batch.event_ids:
                raise OverflowError("cannot encode e3")
            return await self.inner.write_batch(batch)

        async def close(self) -> None:
            await self.inner.close()

    monkeypatch.setattr(replay_module, "create_store", lambda *a, **k: Picky(create_store(*a, **k)))
    await dead_letter(tmp_path / "dlq", records(0, 10))
    code, output = await replay(settings_for(tmp_path))
    assert code == 1
    assert "10 events, 9 written" in output
    assert ".jsonl:4: the file store cannot store it: OverflowError: cannot encode e3" in (
        capsys.readouterr().err
    )
    stored = sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events"))
    assert stored == sorted(f"e{i}" for i in range(10) if i != 3)
    (kept,) = rejected_lines(tmp_path)
    assert orjson.loads(kept)["event"]["event_id"] == "e3"


async def test_with_several_stores_each_folder_goes_to_its_own_store(tmp_path: Path) -> None:
    """database.type file,kafka: dlq/file/ is replayed into the file store; kafka's
    folder is empty, so its (unreachable) broker is not even contacted."""
    settings = settings_for(
        tmp_path,
        AEP_DATABASE_TYPE="file,kafka",
        AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",
    )
    await dead_letter(tmp_path / "dlq" / "file", records(0, 10))
    code, out = await replay(settings)
    print(out)
    assert code == 0
    assert "store kafka: nothing to replay" in out
    assert sorted(str(e["event_id"]) for e in stored_events(tmp_path / "events")) == sorted(
        r["event_id"] for r in records(0, 10)
    )
    code, _ = await replay(settings, tmp_path / "dlq" / "file")
    assert code == 1, "named files with several stores: which store is ambiguous"
