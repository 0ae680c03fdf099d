"""The real server on the file store whose disk (a real 4 MiB tmpfs) is full.

Writes fail with ENOSPC while the file store's ping (the directory is writable)
still passes: health must go NOT_SERVING anyway, a committed request must be
told truthfully whether its events were dead-lettered or lost, and all must
come back once there is room again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.dead_letters import complete_entries
from tests.helpers.full_disk import SmallDisk, small_tmpfs
from tests.helpers.support import ServerProcess, scrape, stored_events, valid_event

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DOWN_AFTER_S = 1.0
MARGIN_S = 4.0  # check interval, retries and a slow shared machine


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until condition held; AssertionError after timeout_s."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def health(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            request = health_pb2.HealthCheckRequest(service="")
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)
        except grpc.RpcError:
            return None


def send_committed(api: pb_grpc.AdEventServiceStub, prefix: str, count: int) -> list[str]:
    events = [valid_event(event_id=f"{prefix}-{i}", ad_id="a" * 100) for i in range(count)]
    response = api.SendAdEventBatch(
        pb.SendAdEventBatchRequest(events=events, ack_mode=pb.ACK_MODE_COMMITTED), timeout=30
    )
    return [r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED]


@pytest.mark.parametrize(
    ("dead_letters_on", "leave_bytes", "kept"),
    [
        ("other-disk", 0, range(100, 101)),
        ("full-disk", 0, range(1)),
        ("full-disk", 16384, range(1, 100)),
    ],
    ids=["dead-letters-elsewhere", "dead-letters-on-the-full-disk", "room-for-some-dead-letters"],
)
def test_full_disk_not_serving_and_truthful_committed_errors(
    disk: SmallDisk, tmp_path: Path, dead_letters_on: str, leave_bytes: int, kept: range
) -> None:
    """kept: how many of the 100 refused events the dead-letter file can take."""
    dead_letter_dir = (disk.root if dead_letters_on == "full-disk" else tmp_path) / "dlq"
    server = ServerProcess(
        tmp_path / "service",
        {
            "AEP_DATABASE_FILE_DIR": str(disk.root / "events"),
            "AEP_DEAD_LETTER_DIR": str(dead_letter_dir),
            "AEP_HEALTH_STORE_DOWN_AFTER": f"{DOWN_AFTER_S}s",
            "AEP_HEALTH_STORE_CHECK_INTERVAL": "100ms",
            "AEP_RETRY_MAX_ATTEMPTS": "2",
            "AEP_RETRY_INITIAL_BACKOFF": "10ms",
            "AEP_BATCH_FLUSH_INTERVAL": "20ms",
        },
    ).start()
    acknowledged: list[str] = []
    try:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            acknowledged += send_committed(api, "before", 10)
            assert len(acknowledged) == 10
            disk.fill(leave_bytes)
            # Larger than the room left (the event file is cut back after the
            # failed write, so the dead-letter append finds that room again).
            with pytest.raises(grpc.RpcError) as refused:
                send_committed(api, "full", 100)
            message = str(refused.value.details())
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            dead_lettered = len(complete_entries(dead_letter_dir))
            print(f"{dead_lettered} of 100 refused events in the dead-letter file: {message!r}")
            assert_truthful(message, dead_lettered)
            assert dead_lettered in kept
            down_after = wait_for(
                lambda: health(server.address) == NOT_SERVING,
                DOWN_AFTER_S + MARGIN_S,
                "NOT_SERVING while every write fails",
            )
            terms = scrape(server.metrics_port).conservation()
            disk.free()
            assert health(server.address) == NOT_SERVING  # room again, but no write yet
            after = send_committed(api, "after", 10)
            assert len(after) == 10
            acknowledged += after
            wait_for(lambda: health(server.address) == SERVING, MARGIN_S, "SERVING again")
        exit_code = server.stop()
    finally:
        server.stop()
    stored = [str(e["event_id"]) for e in stored_events(disk.root / "events")]
    dead = complete_entries(dead_letter_dir)
    print(
        f"full disk ({leave_bytes} B left), dead letters on {dead_letters_on}: "
        f"acknowledged={len(acknowledged)} stored={len(stored)} "
        f"duplicates={len(stored) - len(set(stored))} "
        f"dead-lettered={int(terms['dead_lettered'])} lost={int(terms['lost'])} "
        f"NOT_SERVING {down_after:.2f}s after the refused commit"
    )
    # The exit code says whether anything was lost this run.
    assert exit_code == (0 if terms["lost"] == 0 else 1), server.log()
    assert down_after >= DOWN_AFTER_S / 2, "NOT_SERVING before health.store_down_after"
    assert sorted(stored) == sorted(acknowledged)
    assert int(terms["dead_lettered"]) == len(dead)
    assert int(terms["dead_lettered"]) + int(terms["lost"]) == 100


def assert_truthful(message: str, dead_lettered: int) -> None:
    """What the UNAVAILABLE message says happened to the 100 refused events."""
    if dead_lettered == 100:
        assert "they were dead-lettered (100 events)" in message, message
    elif dead_lettered == 0:
        assert "dead-lettered" not in message, message
        assert "100 events were lost" in message, message
    else:
        expected = f"{dead_lettered} events were dead-lettered and {100 - dead_lettered} were lost"
        assert expected in message, message
