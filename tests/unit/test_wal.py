from __future__ import annotations

import asyncio
from pathlib import Path

from aep.records import EventRecord
from aep.wal import WriteAheadLog, frame, read_segment


def events(start: int, count: int) -> list[EventRecord]:
    return [{"event_id": f"e{i}", "user_id": "u"} for i in range(start, start + count)]


async def test_appends_are_group_committed_and_survive_a_restart(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    assert wal.open() == []
    wal.start()
    segments = await asyncio.gather(*(wal.append(events(i * 10, 10)) for i in range(50)))
    assert wal.fsyncs < 50  # appends that arrived together shared fsyncs
    assert len({s.sequence for s in segments}) == 1
    # The process dies here: nothing was committed to a store, nothing closed.
    again = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    leftovers = again.open()
    replayed = [
        e["event_id"] for s in leftovers for batch in read_segment(s.path)[0] for e in batch
    ]
    assert sorted(replayed) == sorted(f"e{i}" for i in range(500))


async def test_committed_sealed_segments_are_deleted(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=200)
    wal.open()
    wal.start()
    first = await wal.append(events(0, 5))
    second = await wal.append(events(5, 5))  # over 200 bytes: a new segment
    assert first is not second
    assert first.path.exists()
    wal.committed(first)
    assert not first.path.exists()  # sealed and nothing pending
    wal.committed(second)
    assert second.path.exists()  # still the current segment
    await wal.close()
    assert list(tmp_path.glob("wal-*.log")) == []


async def test_uncommitted_records_are_kept_at_close(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    wal.open()
    wal.start()
    await wal.append(events(0, 3))
    await wal.close()
    leftovers = WriteAheadLog(tmp_path, segment_bytes=1 << 20).open()
    assert [e["event_id"] for s in leftovers for b in read_segment(s.path)[0] for e in b] == [
        "e0",
        "e1",
        "e2",
    ]


def test_a_corrupt_tail_is_quarantined_and_the_readable_part_replayed(tmp_path: Path) -> None:
    good = frame(b'[{"event_id":"a"}]') + frame(b'[{"event_id":"b"}]')
    flipped = bytearray(frame(b'[{"event_id":"c"}]'))
    flipped[-3] ^= 0xFF  # a bit flip: the checksum no longer holds
    (tmp_path / "wal-000000000001.log").write_bytes(good + bytes(flipped))
    (tmp_path / "wal-000000000002.log").write_bytes(good[:-4])  # cut mid-record
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    leftovers = wal.open()
    assert wal.quarantined == 2
    assert [[e["event_id"] for b in read_segment(s.path)[0] for e in b] for s in leftovers] == [
        ["a", "b"],
        ["a"],
    ]
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == [
        "wal-000000000001.corrupt",
        "wal-000000000002.corrupt",
    ]


def test_read_segment_reports_a_clean_end(tmp_path: Path) -> None:
    path = tmp_path / "wal-1.log"
    path.write_bytes(frame(b"[]") + frame(b'[{"event_id":"x"}]'))
    records, clean = read_segment(path)
    assert clean
    assert records == [[], [{"event_id": "x"}]]
