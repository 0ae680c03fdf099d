from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from aep.events.schema import EventRecord
from aep.pipeline.wal import WalError, WriteAheadLog, frame, read_segment, scan_segment
from tests.helpers.full_disk import small_tmpfs
from tests.helpers.support import block_of


def events(start: int, count: int) -> list[EventRecord]:
    return [{"event_id": f"e{i}", "user_id": "u"} for i in range(start, start + count)]


async def test_appends_are_group_committed_and_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    assert wal.open() == []
    wal.start()
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    segments = await asyncio.gather(*(wal.append(block_of(events(i * 10, 10))) for i in range(50)))
    monkeypatch.undo()
    assert 0 < fsyncs < 50  # appends that arrived together shared fsyncs
    assert len({s.sequence for s in segments}) == 1
    # The process dies here: nothing was committed to a store, nothing closed.
    again = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    leftovers = again.open()
    replayed = [
        e["event_id"]
        for s in leftovers
        for batch in read_segment(s.path)[0]
        for e in batch.records()
    ]
    assert sorted(replayed) == sorted(f"e{i}" for i in range(500))


async def test_committed_sealed_segments_are_deleted(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=200)
    wal.open()
    wal.start()
    first = await wal.append(block_of(events(0, 5)))
    second = await wal.append(block_of(events(5, 5)))  # over 200 bytes: a new segment
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
    await wal.append(block_of(events(0, 3)))
    await wal.close()
    leftovers = WriteAheadLog(tmp_path, segment_bytes=1 << 20).open()
    assert [
        e["event_id"] for s in leftovers for b in read_segment(s.path)[0] for e in b.records()
    ] == [
        "e0",
        "e1",
        "e2",
    ]


def test_a_corrupt_tail_is_counted_and_the_readable_part_replayed(tmp_path: Path) -> None:
    good = frame(b'[{"event_id":"a"}]') + frame(b'[{"event_id":"b"}]')
    flipped = bytearray(frame(b'[{"event_id":"c"}]'))
    flipped[-3] ^= 0xFF  # a bit flip: the checksum no longer holds
    (tmp_path / "wal-000000000001.log").write_bytes(good + bytes(flipped))
    (tmp_path / "wal-000000000002.log").write_bytes(good[:-4])  # cut mid-record
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    leftovers = wal.open()
    assert wal.quarantined == 2
    assert [
        [e["event_id"] for b in read_segment(s.path)[0] for e in b.records()] for s in leftovers
    ] == [
        ["a", "b"],
        ["a"],
    ]
    # Kept under their names until their records are stored (a restart replays them).
    assert [s.path.name for s in leftovers] == ["wal-000000000001.log", "wal-000000000002.log"]
    assert all(s.keep for s in leftovers)


def test_read_segment_reports_a_clean_end(tmp_path: Path) -> None:
    path = tmp_path / "wal-1.log"
    path.write_bytes(frame(b"[]") + frame(b'[{"event_id":"x"}]'))
    blocks, clean = read_segment(path)
    assert clean
    assert [block.records() for block in blocks] == [[], [{"event_id": "x"}]]


# -- framing and resync ----------------------------------------------------------


def _payload(start: int, count: int) -> bytes:
    """What an append writes: the block's JSON Lines."""
    return block_of(events(start, count)).lines


def _segment_of(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """The bytes of a segment of these records, and each record's offset."""
    offsets: list[int] = []
    data = b""
    for payload in payloads:
        offsets.append(len(data))
        data += frame(payload)
    return data, offsets


def _ids(path: Path) -> list[str]:
    return [str(e["event_id"]) for batch in read_segment(path)[0] for e in batch.records()]


def test_the_framing_is_the_one_earlier_versions_wrote(tmp_path: Path) -> None:
    # <length u32 LE><crc32 u32 LE><payload>: segments of earlier versions replay as before.
    assert frame(b"[]") == b"\x02\x00\x00\x00" + zlib.crc32(b"[]").to_bytes(4, "little") + b"[]"
    path = tmp_path / "wal-000000000001.log"
    path.write_bytes(
        struct.pack("<II", 18, zlib.crc32(b'[{"event_id":"a"}]')) + b'[{"event_id":"a"}]'
    )
    blocks, clean = read_segment(path)
    assert clean
    assert [block.records() for block in blocks] == [[{"event_id": "a"}]]


def test_an_append_writes_the_blocks_json_lines_as_they_are(tmp_path: Path) -> None:
    block = block_of(events(0, 3))
    path = tmp_path / "wal-000000000001.log"
    path.write_bytes(frame(block.lines))
    [read] = read_segment(path)[0]
    assert read.lines == block.lines  # the very bytes: no re-encoding on the way
    assert read.event_ids == block.event_ids


def test_segments_mixing_both_payload_forms_and_damage_replay_every_whole_record(
    tmp_path: Path,
) -> None:
    # An earlier version's array record, damage, then this version's JSON Lines.
    data = frame(orjson.dumps(events(0, 4))) + b"\x00" * 37 + frame(_payload(4, 4))
    data += frame(_payload(8, 2))[:-5] + frame(orjson.dumps(events(10, 3)))
    path = tmp_path / "wal-000000000001.log"
    path.write_bytes(data)
    scan = scan_segment(path)
    assert _ids(path) == [f"e{i}" for i in [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12]]
    assert len(scan.damage) == 2


def _flip_payload(data: bytearray, offset: int, length: int) -> None:
    data[offset + 8 + length // 2] ^= 0xFF


def _flip_checksum(data: bytearray, offset: int, length: int) -> None:
    data[offset + 5] ^= 0x01


def _huge_length(data: bytearray, offset: int, length: int) -> None:
    data[offset : offset + 4] = (0xFFFFFFF0).to_bytes(4, "little")


def _zeroed(data: bytearray, offset: int, length: int) -> None:
    data[offset : offset + 8 + length] = bytes(8 + length)


@pytest.mark.parametrize("damage", [_flip_payload, _flip_checksum, _huge_length, _zeroed])
def test_replay_resyncs_to_the_record_after_a_damaged_one(
    tmp_path: Path, damage: Callable[[bytearray, int, int], None]
) -> None:
    payloads = [_payload(i * 10, 10) for i in range(5)]
    data, offsets = _segment_of(payloads)
    damaged = bytearray(data)
    damage(damaged, offsets[2], len(payloads[2]))
    path = tmp_path / "wal-000000000001.log"
    path.write_bytes(bytes(damaged))
    # Only the damaged record's events are missing.
    assert _ids(path) == [f"e{i}" for i in range(50) if not 20 <= i < 30]
    scan = scan_segment(path)
    assert [(d.offset, d.length) for d in scan.damage] == [(offsets[2], offsets[3] - offsets[2])]
    assert scan.events == 40


def test_a_torn_tail_and_damage_in_the_middle_are_both_reported(tmp_path: Path) -> None:
    payloads = [_payload(i * 10, 10) for i in range(4)]
    data, offsets = _segment_of(payloads)
    damaged = bytearray(data + frame(_payload(40, 10))[:-7])  # a crash mid-append
    _flip_payload(damaged, offsets[1], len(payloads[1]))
    path = tmp_path / "wal-000000000001.log"
    path.write_bytes(bytes(damaged))
    scan = scan_segment(path)
    assert [(d.offset, d.length) for d in scan.damage] == [
        (offsets[1], offsets[2] - offsets[1]),
        (len(data), len(damaged) - len(data)),
    ]
    assert _ids(path) == [f"e{i}" for i in range(40) if not 10 <= i < 20]


def test_a_damaged_segment_is_replayed_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = [_payload(i * 10, 10) for i in range(3)]
    data, offsets = _segment_of(payloads)
    damaged = bytearray(data)
    _flip_payload(damaged, offsets[1], len(payloads[1]))
    (tmp_path / "wal-000000000001.log").write_bytes(bytes(damaged))
    (tmp_path / "wal-000000000002.log").write_bytes(frame(_payload(100, 5)))
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    with caplog.at_level(logging.WARNING, logger="aep.pipeline.wal"):
        leftovers = wal.open()
    assert [s.path.name for s in leftovers] == ["wal-000000000001.log", "wal-000000000002.log"]
    assert [s.replay_events for s in leftovers] == [20, 5]
    assert (wal.damaged_records, wal.skipped_bytes) == (1, offsets[2] - offsets[1])
    assert wal.quarantined == 1
    damaged_logs = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged_logs) == 1
    assert damaged_logs[0].__dict__["damage"] == [
        {"offset": offsets[1], "length": offsets[2] - offsets[1]}
    ]


async def test_a_damaged_segment_is_set_aside_only_once_its_records_are_stored(
    tmp_path: Path,
) -> None:
    (tmp_path / "wal-000000000001.log").write_bytes(frame(_payload(0, 3)) + b"\xff" * 20)
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    (segment,) = wal.open()
    wal.start()
    wal.pin(segment)  # the replay's hold
    wal.pin(segment)  # its one submission
    wal.committed(segment)  # the hold released: the submission is not stored yet
    assert segment.path.exists()
    wal.committed(segment)
    assert not (tmp_path / "wal-000000000001.log").exists()
    assert (tmp_path / "quarantine" / "wal-000000000001.log").exists()
    await wal.close()
    assert WriteAheadLog(tmp_path, segment_bytes=1 << 20).open() == []


def test_a_segment_quarantined_by_an_earlier_version_is_replayed(tmp_path: Path) -> None:
    # Earlier versions renamed a damaged segment *.corrupt before replaying it;
    # a replay interrupted then left its events there.
    (tmp_path / "wal-000000000001.corrupt").write_bytes(frame(_payload(0, 4)) + b"\x01\x02")
    leftovers = WriteAheadLog(tmp_path, segment_bytes=1 << 20).open()
    assert [_ids(s.path) for s in leftovers] == [["e0", "e1", "e2", "e3"]]


def test_stray_files_in_the_directory_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "wal-copy.log").write_bytes(frame(_payload(0, 1)))
    (tmp_path / "wal-000000000009.log").mkdir()
    (tmp_path / "wal-000000000003.log").write_bytes(frame(_payload(1, 2)))
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    with caplog.at_level(logging.WARNING, logger="aep.pipeline.wal"):
        leftovers = wal.open()
    assert [_ids(s.path) for s in leftovers] == [["e1", "e2"]]
    warned = " ".join(r.getMessage() + str(r.__dict__.get("path")) for r in caplog.records)
    assert "wal-copy.log" in warned
    assert "wal-000000000009.log" in warned
    assert (tmp_path / "wal-copy.log").exists()
    assert (tmp_path / "wal-000000000009.log").is_dir()


async def test_appends_after_stray_files_go_to_a_new_segment(tmp_path: Path) -> None:
    (tmp_path / "wal-000000000009.log").mkdir()
    (tmp_path / "wal-000000000010.log.bak").write_bytes(b"junk")
    wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
    wal.open()
    wal.start()
    segment = await wal.append(block_of(events(0, 2)))
    assert segment.path.is_file()
    assert segment.sequence > 9
    await wal.close()


# -- failed appends on a full disk --------------------------------------------------


async def test_a_failed_append_on_a_full_disk_leaves_the_segment_as_it_was(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", size="4m") as disk:
        wal = WriteAheadLog(disk.root / "wal", segment_bytes=1 << 30)
        wal.open()
        wal.start()
        segment = await wal.append(block_of(events(0, 10)))
        before = segment.path.read_bytes()
        disk.fill()
        with pytest.raises(WalError):
            await wal.append(block_of(events(10, 500)))  # more than the page the segment still has
        assert segment.path.read_bytes() == before
        disk.free()
        after = await wal.append(block_of(events(510, 10)))
        assert after is segment
        await wal.close()
        assert _ids(segment.path) == [f"e{i}" for i in range(10)] + [
            f"e{i}" for i in range(510, 520)
        ]
        assert scan_segment(segment.path).damage == []


class _TruncateFails(WriteAheadLog):
    def _truncate(self, fd: int, size: int) -> None:
        raise OSError(errno.EIO, "injected: ftruncate failed")


async def test_when_the_cut_back_fails_the_next_append_goes_to_a_new_segment(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", size="4m") as disk:
        wal = _TruncateFails(disk.root / "wal", segment_bytes=1 << 30)
        wal.open()
        wal.start()
        first = await wal.append(block_of(events(0, 10)))
        disk.fill()
        with pytest.raises(WalError):
            await wal.append(block_of(events(10, 500)))
        disk.free()
        second = await wal.append(block_of(events(510, 10)))
        assert second is not first
        # The process dies here; the next start reads both, past the garbage.
        leftovers = WriteAheadLog(disk.root / "wal", segment_bytes=1 << 30).open()
        assert [s.sequence for s in leftovers] == [first.sequence, second.sequence]
        assert _ids(first.path)[:10] == [f"e{i}" for i in range(10)]
        assert _ids(second.path) == [f"e{i}" for i in range(510, 520)]


# -- rotation failures -----------------------------------------------------------------


async def test_rotation_out_of_inodes_fails_only_that_group(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", size="4m", nr_inodes=16) as disk:
        wal = WriteAheadLog(disk.root / "wal", segment_bytes=4096)
        wal.open()
        wal.start()
        first = await wal.append(
            block_of(events(0, 200))
        )  # over segment_bytes: the next one rotates
        ballast = disk.fill_inodes()
        for attempt in range(3):
            with pytest.raises(WalError, match="No space left"):
                await asyncio.wait_for(wal.append(block_of(events(100 + attempt, 1))), 5)
        ballast.pop().unlink()
        second = await asyncio.wait_for(wal.append(block_of(events(200, 1))), 5)
        assert second is not first
        assert second.path.is_file()
        await asyncio.wait_for(wal.close(), 5)
        for path in ballast:
            path.unlink()
        leftovers = WriteAheadLog(disk.root / "wal", segment_bytes=4096).open()
        assert [_ids(s.path) for s in leftovers] == [
            [f"e{i}" for i in range(200)],
            ["e200"],
        ]


_OUT_OF_DESCRIPTORS = """
import asyncio, json, os, resource, sys
from pathlib import Path
from aep.pipeline.wal import WalError, WriteAheadLog
from tests.helpers.support import block_of

async def main():
    wal = WriteAheadLog(Path(sys.argv[1]), segment_bytes=4096)
    wal.open()
    wal.start()
    records = [{"event_id": f"e{i}", "user_id": "u"} for i in range(200)]
    first = await wal.append(block_of(records))  # over segment_bytes: the next append rotates
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    spare = []
    while True:
        try:
            spare.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    outcomes = []
    for attempt in range(3):
        try:
            await asyncio.wait_for(wal.append(block_of([{"event_id": f"x{attempt}"}])), 5)
            outcomes.append("appended")
        except WalError as error:
            outcomes.append("WalError: " + str(error))
        except TimeoutError:
            outcomes.append("hung")
    for fd in spare:
        os.close(fd)
    try:
        second = await asyncio.wait_for(wal.append(block_of([{"event_id": "y"}])), 5)
        outcomes.append("rotated" if second is not first else "same segment")
    except (WalError, TimeoutError) as error:
        outcomes.append("after: " + type(error).__name__)
    try:
        await asyncio.wait_for(wal.close(), 5)
        outcomes.append("closed")
    except BaseException as error:
        outcomes.append("close: " + type(error).__name__)
    print(json.dumps(outcomes))

asyncio.run(main())
"""


def test_rotation_out_of_file_descriptors_fails_only_that_group(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _OUT_OF_DESCRIPTORS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcomes = orjson.loads(result.stdout.strip().splitlines()[-1])
    print(outcomes)
    assert all(o.startswith("WalError: ") and "Too many open files" in o for o in outcomes[:3])
    assert outcomes[3:] == ["rotated", "closed"]
    assert [p.name for p in sorted(tmp_path.glob("wal-*.log"))][-1] != "wal-000000000001.log"
