"""replay-dlq against a real file store (the Redis variant runs in the integration tests)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson
import pytest
from support import stored_events

from aep.deadletter import DeadLetterQueue
from aep.records import EventRecord
from aep.replay import CLAIMED_DIR, REPLAYED_DIR, replay_dead_letters
from aep.settings import Settings, load_settings


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
    return [
        {"event_id": f"e{i}", "user_id": "u", "ad_id": "a", "event_type": "EVENT_TYPE_CLICK"}
        for i in range(start, start + count)
    ]


async def dead_letter(directory: Path, batch: list[EventRecord]) -> Path:
    queue = DeadLetterQueue(directory)
    await queue.append(batch, "StoreError: down", attempts=5)
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
    assert "2 unreadable lines" in output
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
    await queue.append(records(0, 2), "down", attempts=5)
    settings = settings_for(tmp_path)
    code, _ = await replay(settings)
    assert code == 0
    await queue.append(records(2, 3), "down", attempts=5)  # same queue, same file name
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
            await queue.append(records(start, 4), "down", attempts=5)

    appender = asyncio.create_task(keep_appending())
    while not appender.done():
        assert (await replay(settings))[0] == 0
    await appender
    assert (await replay(settings))[0] == 0
    ids = [str(e["event_id"]) for e in stored_events(tmp_path / "events")]
    assert sorted(ids) == sorted(f"e{i}" for i in range(400))


async def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    code, _ = await replay(settings_for(tmp_path), tmp_path / "nope.jsonl")
    assert code == 1
