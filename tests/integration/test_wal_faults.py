"""The write-ahead log under disk faults: full disks, damaged records, interrupted replays.

Each test drives a real server process over gRPC with ack mode `durable`,
breaks the log's disk (a small tmpfs) or its bytes, restarts, and checks that
every acknowledged event_id reached the file store. Each prints
acknowledged / stored / duplicates / dead-lettered / lost.
"""

from __future__ import annotations

import collections
import json
import signal
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest

from aep.events.block import EventBlock
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.full_disk import small_tmpfs
from tests.helpers.support import ServerProcess, scrape, stored_events, valid_event

pytestmark = pytest.mark.integration

# Acknowledged events stay in memory and in the log only (nothing is flushed)
# until the server is killed or stopped.
_NO_FLUSH = {
    "AEP_BATCH_SIZE": "100000",
    "AEP_BATCH_FLUSH_INTERVAL": "1h",
    "AEP_QUEUE_MAX_EVENTS": "1000000",
}
_EVENTS_PER_BATCH = 20
_HEADER = struct.Struct("<II")


@dataclass
class Sent:
    acknowledged: list[str] = field(default_factory=list)
    refused: collections.Counter[grpc.StatusCode] = field(default_factory=collections.Counter)


def send_durable(server: ServerProcess, prefix: str, batches: int, sent: Sent) -> Sent:
    """`batches` durable batches, one at a time; what was acknowledged and what refused."""
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        for sequence in range(batches):
            events = [
                valid_event(event_id=f"{prefix}-{sequence}-{i}") for i in range(_EVENTS_PER_BATCH)
            ]
            try:
                response = api.SendAdEventBatch(
                    pb.SendAdEventBatchRequest(events=events, ack_mode=pb.ACK_MODE_DURABLE),
                    timeout=5,
                )
            except grpc.RpcError as error:
                sent.refused[error.code()] += 1
                continue
            assert response.ack_mode == pb.ACK_MODE_DURABLE
            sent.acknowledged.extend(
                r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED
            )
    return sent


def stored_ids(server: ServerProcess) -> list[str]:
    return [str(e["event_id"]) for e in stored_events(server.events_dir)]


def wait_stored(server: ServerProcess, expected: Iterable[str], timeout_s: float = 30) -> None:
    """Until every id in `expected` is in the store (polled)."""
    wanted = set(expected)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process is not None and server.process.poll() is None, server.log()
        if wanted <= set(stored_ids(server)):
            return
        time.sleep(0.1)
    missing = len(wanted - set(stored_ids(server)))
    raise TimeoutError(f"{missing} of {len(wanted)} events not stored within {timeout_s}s")


def pending_events(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        return api.HealthCheck(pb.HealthCheckRequest(), timeout=5).pending_events


def report(case: str, acknowledged: list[str], stored: list[str], dead_lettered: float) -> set[str]:
    """Prints the line of the case; returns the acknowledged ids not stored."""
    counts = collections.Counter(stored)
    duplicates = sum(count - 1 for count in counts.values())
    lost = set(acknowledged) - set(stored)
    print(
        f"{case}: acknowledged={len(acknowledged)} stored={len(stored)} "
        f"duplicates={duplicates} dead-lettered={dead_lettered:g} lost={len(lost)}"
    )
    assert duplicates == 0
    return lost


def log_lines(server: ServerProcess) -> list[dict[str, object]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def stopped_line(server: ServerProcess) -> dict[str, object]:
    [line] = [entry for entry in log_lines(server) if entry.get("message") == "stopped"]
    return line


def records_of(segment: Path) -> list[tuple[int, int, list[str]]]:
    """(offset, framed length, event_ids) of each record of an intact segment."""
    data = segment.read_bytes()
    records = []
    position = 0
    while position < len(data):
        length, _ = _HEADER.unpack_from(data, position)
        payload = data[position + _HEADER.size : position + _HEADER.size + length]
        ids = list(EventBlock.parse(payload).event_ids)  # a payload is the block's JSON Lines
        records.append((position, _HEADER.size + length, ids))
        position += _HEADER.size + length
    assert position == len(data)
    return records


def killed_with_a_log(tmp_path: Path, wal_dir: Path, batches: int) -> Sent:
    """A server acknowledges `batches` durable batches, then is SIGKILLed: all in the log."""
    server = ServerProcess(tmp_path, {"AEP_WAL_DIR": str(wal_dir), **_NO_FLUSH}).start()
    try:
        sent = send_durable(server, "k", batches, Sent())
    finally:
        server.signal(signal.SIGKILL)
        server.wait_exit()
    assert not sent.refused
    assert stored_ids(server) == []
    return sent


def test_acks_after_the_wal_disk_was_full_survive_a_kill(tmp_path: Path) -> None:
    """A write that fails part-way leaves no garbage before the appends that follow it."""
    with small_tmpfs(tmp_path / "wal-disk", size="4m") as disk:
        wal_dir = disk.root / "wal"
        server = ServerProcess(tmp_path / "server", {"AEP_WAL_DIR": str(wal_dir), **_NO_FLUSH})
        server.start()
        try:
            sent = send_durable(server, "before", 30, Sent())
            disk.fill()
            while_full = send_durable(server, "full", 20, Sent())
            disk.free()
            after = send_durable(server, "after", 30, Sent())
        finally:
            server.signal(signal.SIGKILL)
            server.wait_exit()
        # At most the room left in the segment's last page took an append.
        assert set(while_full.refused) == {grpc.StatusCode.UNAVAILABLE}
        assert while_full.refused[grpc.StatusCode.UNAVAILABLE] >= 19
        assert not sent.refused
        assert not after.refused
        acknowledged = sent.acknowledged + while_full.acknowledged + after.acknowledged

        restarted = ServerProcess(tmp_path / "server", {"AEP_WAL_DIR": str(wal_dir)}).start()
        try:
            wait_stored(restarted, acknowledged)
            dead_lettered = scrape(restarted.metrics_port).total("events_dead_lettered_total")
        finally:
            exit_code = restarted.stop()
        lost = report("full WAL disk", acknowledged, stored_ids(restarted), dead_lettered)
        assert not lost
        assert exit_code == 0, restarted.log()
        assert list(wal_dir.glob("wal-*")) == []


def test_replay_skips_only_the_damaged_record(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    sent = killed_with_a_log(tmp_path, wal_dir, batches=15)
    [segment] = [p for p in wal_dir.glob("wal-*.log") if p.stat().st_size]
    records = records_of(segment)
    offset, length, damaged_ids = records[7]
    data = bytearray(segment.read_bytes())
    data[offset + length // 2] ^= 0xFF  # a flipped byte in the middle of one record
    segment.write_bytes(bytes(data))

    restarted = ServerProcess(tmp_path, {"AEP_WAL_DIR": str(wal_dir)}).start()
    try:
        wait_stored(restarted, set(sent.acknowledged) - set(damaged_ids))
        metrics = scrape(restarted.metrics_port)
    finally:
        exit_code = restarted.stop()
    lost = report(
        "damaged record",
        sent.acknowledged,
        stored_ids(restarted),
        metrics.total("events_dead_lettered_total"),
    )
    assert lost == set(damaged_ids)  # only the damaged record's events
    assert exit_code == 0, restarted.log()
    assert metrics.total("wal_damaged_records_total") == 1
    assert metrics.total("wal_skipped_bytes_total") == length
    assert metrics.total("wal_segments_quarantined_total") == 1
    [damaged_line] = [e for e in log_lines(restarted) if "damaged" in str(e.get("message"))][:1]
    assert damaged_line["damage"] == [{"offset": offset, "length": length}]
    # Everything readable was stored: set aside for inspection, not replayed again.
    assert list(wal_dir.glob("wal-*")) == []
    assert (wal_dir / "quarantine" / segment.name).exists()


def test_a_replay_interrupted_by_sigterm_goes_on_at_the_next_start(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    sent = killed_with_a_log(tmp_path, wal_dir, batches=15)
    [segment] = [p for p in wal_dir.glob("wal-*.log") if p.stat().st_size]
    with segment.open("ab") as torn:  # a crash mid-append: a damaged tail
        torn.write(b"\x40\x00\x00\x00\x12\x34")

    # Slow replay: one submission in flight at a time, written after 1 s.
    slow = {
        "AEP_WAL_DIR": str(wal_dir),
        "AEP_QUEUE_MAX_EVENTS": "40",
        "AEP_BATCH_SIZE": "100000",
        "AEP_BATCH_FLUSH_INTERVAL": "1s",
    }
    replaying = ServerProcess(tmp_path, slow).start()
    try:
        deadline = time.monotonic() + 20
        while not stored_ids(replaying) and time.monotonic() < deadline:
            time.sleep(0.05)
        pending = pending_events(replaying)
        stored_meanwhile = len(stored_ids(replaying))
    finally:
        replaying.stop()
    print(f"pending_events={pending} after {stored_meanwhile} of {len(sent.acknowledged)} stored")
    assert 0 < stored_meanwhile < len(sent.acknowledged) // 2

    restarted = ServerProcess(tmp_path, {"AEP_WAL_DIR": str(wal_dir)}).start()
    try:
        wait_stored(restarted, sent.acknowledged)
        deadline = time.monotonic() + 10
        while pending_events(restarted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending_events(restarted) == 0
        dead_lettered = scrape(restarted.metrics_port).total("events_dead_lettered_total")
    finally:
        exit_code = restarted.stop()
    lost = report("SIGTERM during replay", sent.acknowledged, stored_ids(restarted), dead_lettered)
    assert not lost
    # The backlog still in the log was pending too, not only the pipeline's events.
    assert pending >= len(sent.acknowledged) - stored_meanwhile
    stopped = stopped_line(replaying)
    assert stopped["drained"] is False
    assert int(str(stopped.get("wal_backlog_events"))) > 0
    assert replaying.process is not None and replaying.process.returncode == 1
    assert exit_code == 0, restarted.log()
    assert stopped_line(restarted)["drained"] is True
    assert list(wal_dir.glob("wal-*")) == []


def test_rotation_out_of_inodes_fails_only_those_appends(tmp_path: Path) -> None:
    """The writer survives a segment it cannot create; calls get UNAVAILABLE, not a hang."""
    with small_tmpfs(tmp_path / "wal-disk", size="4m", nr_inodes=64) as disk:
        wal_dir = disk.root / "wal"
        env = {"AEP_WAL_DIR": str(wal_dir), "AEP_WAL_SEGMENT_BYTES": "4096", **_NO_FLUSH}
        server = ServerProcess(tmp_path / "server", env).start()
        try:
            sent = send_durable(server, "before", 10, Sent())  # a segment per batch
            ballast = disk.fill_inodes()
            started = time.monotonic()
            while_full = send_durable(server, "full", 5, Sent())
            seconds_full = time.monotonic() - started
            for path in ballast:
                path.unlink()
            after = send_durable(server, "after", 10, Sent())
        finally:
            exit_code = server.stop()
        print(f"refused while out of inodes: {dict(while_full.refused)} in {seconds_full:.1f}s")
        assert not sent.refused
        assert while_full.refused == {grpc.StatusCode.UNAVAILABLE: 5}
        assert seconds_full < 5  # refused at once, not after the deadline
        assert not after.refused
        acknowledged = sent.acknowledged + after.acknowledged
        lost = report("rotation out of inodes", acknowledged, stored_ids(server), 0)
        assert not lost
        assert exit_code == 0, server.log()
        assert "Traceback" not in server.log()
        assert stopped_line(server)["drained"] is True
        assert list(wal_dir.glob("wal-*")) == []


def test_stray_files_in_the_wal_folder_do_not_stop_the_server(tmp_path: Path) -> None:
    from aep.pipeline.wal import frame

    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    record = {
        "event_id": "s1",
        "user_id": "u",
        "ad_id": "a",
        "event_type": "EVENT_TYPE_CLICK",
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "received_at": "2026-01-01T00:00:00.000000Z",
    }
    (wal_dir / "wal-000000000003.log").write_bytes(frame(orjson.dumps([record])))
    (wal_dir / "wal-copy.log").write_bytes(b"an operator's copy")
    (wal_dir / "wal-000000000009.log").mkdir()
    server = ServerProcess(tmp_path, {"AEP_WAL_DIR": str(wal_dir)}).start()
    try:
        wait_stored(server, ["s1"])
        sent = send_durable(server, "live", 3, Sent())
    finally:
        exit_code = server.stop()
    lost = report("stray files", ["s1", *sent.acknowledged], stored_ids(server), 0)
    assert not lost
    assert not sent.refused
    assert exit_code == 0, server.log()
    warnings = [e for e in log_lines(server) if e.get("level") == "warning"]
    assert {str(e.get("path")) for e in warnings} >= {
        str(wal_dir / "wal-copy.log"),
        str(wal_dir / "wal-000000000009.log"),
    }
    assert sorted(p.name for p in wal_dir.iterdir()) == ["wal-000000000009.log", "wal-copy.log"]
