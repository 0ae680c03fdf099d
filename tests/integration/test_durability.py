"""Ack mode `durable`: what the write-ahead log promises, under SIGKILL."""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.support import ServerProcess, scrape, stored_events, valid_event

pytestmark = pytest.mark.integration


def _send_until_killed(server: ServerProcess, worker: int, acknowledged: list[str]) -> None:
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        for sequence in range(100_000):
            events = [valid_event(event_id=f"d{worker}-{sequence}-{i}") for i in range(20)]
            try:
                response = api.SendAdEventBatch(
                    pb.SendAdEventBatchRequest(events=events, ack_mode=pb.ACK_MODE_DURABLE),
                    timeout=5,
                )
            except grpc.RpcError:
                return  # the server is gone
            assert response.ack_mode == pb.ACK_MODE_DURABLE
            acknowledged.extend(r.event_id for r in response.results)


def _wait_replayed(server: ServerProcess, expected: set[str], timeout_s: float = 30) -> None:
    """Until every expected event_id is stored and nothing is pending, the log's backlog included.

    pending_events alone is not enough: it can read 0 between two replayed
    submissions, before the replay has submitted everything.
    """
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        while time.monotonic() < deadline:
            stored = {str(e["event_id"]) for e in stored_events(server.events_dir)}
            pending = api.HealthCheck(pb.HealthCheckRequest(), timeout=5).pending_events
            if expected <= stored and pending == 0:
                return
            time.sleep(0.1)
    raise TimeoutError("the replay did not store every acknowledged event")


def test_sigkill_under_load_loses_no_durable_ack(tmp_path: Path) -> None:
    env = {
        "AEP_WAL_DIR": str(tmp_path / "wal"),
        # Slow flushes: at the kill, most acknowledged events exist only in memory
        # and in the log.
        "AEP_BATCH_SIZE": "100000",
        "AEP_BATCH_FLUSH_INTERVAL": "1h",
        "AEP_QUEUE_MAX_EVENTS": "1000000",
    }
    server = ServerProcess(tmp_path, env).start()
    acknowledged: list[str] = []
    senders = [
        threading.Thread(target=_send_until_killed, args=(server, worker, acknowledged))
        for worker in range(4)
    ]
    for thread in senders:
        thread.start()
    time.sleep(2.0)
    server.signal(signal.SIGKILL)
    assert server.wait_exit() == -signal.SIGKILL
    for thread in senders:
        thread.join(timeout=10)
    before_restart = {str(e["event_id"]) for e in stored_events(server.events_dir)}
    assert len(acknowledged) > 500
    assert len(before_restart) < len(acknowledged)  # the kill did take acked events from memory

    # Restarted with default batching: the replay flushes as usual.
    restarted = ServerProcess(tmp_path, {"AEP_WAL_DIR": env["AEP_WAL_DIR"]}).start()
    try:
        _wait_replayed(restarted, set(acknowledged))
        dead_lettered = scrape(restarted.metrics_port).total("events_dead_lettered_total")
    finally:
        exit_code = restarted.stop()
    assert exit_code == 0, restarted.log()
    stored = [str(e["event_id"]) for e in stored_events(server.events_dir)]
    counts = collections.Counter(stored)
    lost = set(acknowledged) - set(stored)
    duplicates = sum(count - 1 for count in counts.values())
    print(
        f"acknowledged={len(acknowledged)} stored={len(stored)} "
        f"duplicates={duplicates} dead-lettered={dead_lettered:g} lost={len(lost)}"
    )
    assert not lost
    assert duplicates == 0
    assert "replaying the write-ahead log" in restarted.log()
    # Everything replayed was stored, so the log is empty again.
    assert list((tmp_path / "wal").glob("wal-*.log")) == []


def test_durable_ack_is_refused_without_a_log(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            api.SendAdEvent(
                pb.SendAdEventRequest(event=valid_event(), ack_mode=pb.ACK_MODE_DURABLE), timeout=5
            )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "wal.dir" in (raised.value.details() or "")


def test_a_corrupt_log_tail_is_counted_replayed_then_quarantined(tmp_path: Path) -> None:
    from aep.pipeline.wal import frame

    wal = tmp_path / "wal"
    wal.mkdir()
    whole = frame(b'[{"event_id":"w1","user_id":"u","ad_id":"a","event_type":"EVENT_TYPE_CLICK"}]')
    (wal / "wal-000000000001.log").write_bytes(whole + whole[:9])  # a crash mid-append
    server = ServerProcess(tmp_path, {"AEP_WAL_DIR": str(wal)}).start()
    try:
        _wait_replayed(server, {"w1"})
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5
        ) as response:
            metrics = response.read().decode()
    finally:
        exit_code = server.stop()
    assert exit_code == 0
    assert "wal_segments_quarantined_total 1.0" in metrics
    assert "wal_damaged_records_total 1.0" in metrics
    assert "wal_skipped_bytes_total 9.0" in metrics
    assert "is damaged" in server.log()
    assert [e["event_id"] for e in stored_events(server.events_dir)] == ["w1"]
    # Replayed whole, so set aside for inspection where start-up no longer reads it.
    assert list(wal.glob("wal-*")) == []
    assert (wal / "quarantine" / "wal-000000000001.log").exists()
