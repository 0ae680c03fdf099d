"""Dead-letter appends on a real, full 4 MiB tmpfs: what is counted is what is on disk."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from aep.pipeline.core import CommitFailedError, Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue, DeadLetterWriteError
from aep.pipeline.ledger import Ledger
from aep.settings import AckMode, BatchSettings, QueueSettings, RetrySettings, load_settings
from aep.tools.dead_letter_replay import replay_dead_letters
from tests.helpers.dead_letters import complete_entries, stored_records
from tests.helpers.full_disk import SmallDisk, small_tmpfs
from tests.helpers.support import batch_of, block_of, stored_events
from tests.unit.test_pipeline import FakeStore


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def failing_pipeline(dead_letter_dir: Path) -> tuple[Pipeline, Ledger, FakeStore]:
    store = FakeStore()
    store.fail_next = 10**9  # the store refuses everything: each batch is dead-lettered
    stats = Ledger()
    pipeline = Pipeline(
        [Outlet(store, DeadLetterQueue(dead_letter_dir))],
        stats,
        batch=BatchSettings(size=2000, flush_interval=0.001, worker_pool_size=1),
        queue=QueueSettings(max_events=100_000, max_bytes=10**9),
        retry=RetrySettings(max_attempts=1, initial_backoff=0.001, max_backoff=0.001),
    )
    pipeline.start()
    return pipeline, stats, store


async def give_up_on(pipeline: Pipeline, start: int, count: int) -> CommitFailedError:
    done = pipeline.offer(block_of(stored_records(start, count)), count * 400, AckMode.COMMITTED)
    assert done is not None
    with pytest.raises(CommitFailedError) as failed:
        await asyncio.wait_for(done, 10)
    return failed.value


@pytest.mark.parametrize("leave_bytes", [0, 64 * 1024], ids=["full", "64KiB-left"])
async def test_enospc_mid_append_counts_whole_lines_and_replay_recovers_them(
    disk: SmallDisk, tmp_path: Path, leave_bytes: int
) -> None:
    dead_letter_dir = disk.root / "dlq"
    pipeline, stats, _ = failing_pipeline(dead_letter_dir)
    first = await give_up_on(pipeline, 0, 10)  # creates the file while there is room
    assert (first.dead_lettered, first.lost) == (10, 0)

    disk.fill(leave_bytes=leave_bytes)
    cut_short = await give_up_on(pipeline, 10, 1000)  # far more than the room left
    on_disk = complete_entries(dead_letter_dir)
    files = list(dead_letter_dir.glob("dead-letter-*.jsonl"))
    assert len(files) == 1
    assert files[0].read_bytes().endswith(b"\n"), "a torn line was left behind"
    assert stats.events_dead_lettered == len(on_disk)
    assert stats.events_lost == 1010 - len(on_disk)
    assert on_disk == [f"e{i}" for i in range(len(on_disk))]  # a prefix, in order
    assert cut_short.dead_lettered + cut_short.lost == 1000
    assert cut_short.dead_lettered == len(on_disk) - 10
    cut_short_saved = cut_short.dead_lettered

    disk.free()
    after = await give_up_on(pipeline, 2000, 20)
    assert (after.dead_lettered, after.lost) == (20, 0)
    await pipeline.drain(5)
    on_disk = complete_entries(dead_letter_dir)
    assert stats.events_dead_lettered == len(on_disk) == 10 + cut_short_saved + 20
    assert stats.events_lost == 1000 - cut_short_saved

    settings = load_settings(
        environ={
            "AEP_DATABASE_FILE_DIR": str(tmp_path / "events"),
            "AEP_DEAD_LETTER_DIR": str(dead_letter_dir),
        }
    )
    out = io.StringIO()
    code = await replay_dead_letters(settings, [], out=out)
    replayed = sorted(str(event["event_id"]) for event in stored_events(tmp_path / "events"))
    print(
        f"dead-letter ENOSPC ({leave_bytes} B left): acknowledged=0 (committed, refused) "
        f"stored={len(replayed)} duplicates=0 dead-lettered={stats.events_dead_lettered} "
        f"lost={stats.events_lost} (cut-short append: {cut_short_saved} of 1000 kept)"
    )
    assert code == 0, out.getvalue()
    assert replayed == sorted(on_disk)


async def test_a_failed_append_reports_how_many_whole_lines_it_kept(disk: SmallDisk) -> None:
    queue = DeadLetterQueue(disk.root / "dlq")
    await queue.append(batch_of(stored_records(0, 1)), "StoreError: down", attempts=1)
    assert queue.path is not None
    size_before = queue.path.stat().st_size
    disk.fill(leave_bytes=16 * 1024)
    with pytest.raises(DeadLetterWriteError) as failed:
        await queue.append(batch_of(stored_records(1, 500)), "StoreError: down", attempts=1)
    assert 0 <= failed.value.saved < 500
    assert complete_entries(disk.root / "dlq") == [f"e{i}" for i in range(1 + failed.value.saved)]
    data = queue.path.read_bytes()
    assert data.endswith(b"\n")
    assert len(data) > size_before or failed.value.saved == 0
