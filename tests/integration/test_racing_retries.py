"""Client retries racing the first write of the same events, on a full disk.

A committed ack says the events are in the store. When the first write of some
event_ids fails (ENOSPC) while a retry of the same ids is being written by
another pipeline writer, the retry must not be answered "duplicate" (and so
committed) for events that are then dead-lettered.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.full_disk import small_tmpfs
from tests.helpers.support import ServerProcess, stored_events, valid_event

pytestmark = pytest.mark.integration

ROUNDS = 40
SENDERS = 4
EVENTS_PER_REQUEST = 50


def _send_committed(
    address: str, events: list[pb.AdEvent], start: threading.Barrier, codes: list[str]
) -> None:
    with grpc.insecure_channel(address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        request = pb.SendAdEventBatchRequest(events=events, ack_mode=pb.ACK_MODE_COMMITTED)
        channel_ready = grpc.channel_ready_future(channel)
        channel_ready.result(timeout=10)
        start.wait(timeout=10)
        try:
            api.SendAdEventBatch(request, timeout=30)
        except grpc.RpcError as error:
            codes.append(error.code().name)
        else:
            codes.append("OK")


def test_no_committed_ack_for_events_a_racing_write_failed_to_store(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        server = ServerProcess(
            tmp_path / "service",
            {
                "AEP_DATABASE_FILE_DIR": str(disk.root / "events"),
                "AEP_BATCH_SIZE": str(EVENTS_PER_REQUEST),  # one request, one batch
                "AEP_BATCH_FLUSH_INTERVAL": "1ms",
                "AEP_BATCH_WORKER_POOL_SIZE": str(SENDERS),
                "AEP_RETRY_MAX_ATTEMPTS": "20",
                "AEP_RETRY_INITIAL_BACKOFF": "1ms",
                "AEP_RETRY_MAX_BACKOFF": "4ms",
                "AEP_HEALTH_STORE_DOWN_AFTER": "1h",
            },
        ).start()
        try:
            disk.fill()
            acknowledged: set[str] = set()
            refused = 0
            for round_number in range(ROUNDS):
                events = [
                    valid_event(event_id=f"r{round_number}-{i}") for i in range(EVENTS_PER_REQUEST)
                ]
                start = threading.Barrier(SENDERS)
                codes: list[str] = []
                senders = [
                    threading.Thread(
                        target=_send_committed, args=(server.address, events, start, codes)
                    )
                    for _ in range(SENDERS)
                ]
                for thread in senders:
                    thread.start()
                for thread in senders:
                    thread.join(timeout=60)
                assert len(codes) == SENDERS, codes
                if "OK" in codes:
                    acknowledged.update(event.event_id for event in events)
                refused += sum(code != "OK" for code in codes)
            stored = {str(e["event_id"]) for e in stored_events(disk.root / "events")}
        finally:
            exit_code = server.stop()
    dead_lettered = sum(
        len(path.read_text().splitlines()) for path in server.dead_letter_dir.glob("*")
    )
    lost = acknowledged - stored
    print(
        f"{ROUNDS} rounds x {SENDERS} racing committed sends on a full disk: "
        f"acknowledged={len(acknowledged)} stored={len(stored)} refused_rpcs={refused} "
        f"dead-lettered={dead_lettered} lost={len(lost)}"
    )
    assert exit_code in (0, 1), server.log()
    assert not lost, f"committed but not stored: {sorted(lost)[:5]}"
    assert refused == ROUNDS * SENDERS
