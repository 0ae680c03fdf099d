"""The real server as a subprocess, driven over a real gRPC channel."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.support import ServerProcess, running_server, stored_events, valid_event

pytestmark = pytest.mark.integration

SERVICE = "adevents.v1.AdEventService"


def details(raised: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return raised.value.details() or ""


def stub(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.AdEventServiceStub]:
    channel = grpc.insecure_channel(server.address)
    return channel, pb_grpc.AdEventServiceStub(channel)


def stop_cleanly(server: ServerProcess) -> list[dict[str, object]]:
    assert server.stop() == 0, server.log()
    return stored_events(server.events_dir)


def test_single_event_gets_a_server_id_and_is_stored(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel:
        event = valid_event(campaign_id="camp-9", attributes={"os": "ios"})
        response = api.SendAdEvent(pb.SendAdEventRequest(event=event), timeout=5)
    assert response.status == pb.EVENT_STATUS_ACCEPTED
    assert response.ack_mode == pb.ACK_MODE_ACCEPTED
    assert len(response.event_id) == 36  # a UUIDv7
    [stored] = stop_cleanly(server)
    assert stored["event_id"] == response.event_id
    assert stored["event_type"] == "EVENT_TYPE_CLICK"
    assert stored["campaign_id"] == "camp-9"
    assert stored["attributes"] == {"os": "ios"}
    assert str(stored["timestamp"]).endswith("Z")


def test_invalid_single_event_is_invalid_argument_naming_the_field(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel, pytest.raises(grpc.RpcError) as raised:
        api.SendAdEvent(pb.SendAdEventRequest(event=valid_event(ad_id="")), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised).startswith("ad_id:")
    assert stop_cleanly(server) == []


def test_request_without_event_is_refused(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel, pytest.raises(grpc.RpcError) as raised:
        api.SendAdEvent(pb.SendAdEventRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised) == "event: required"


def test_mixed_batch_accepts_the_good_and_reports_each_bad_one(server: ServerProcess) -> None:
    events = [
        valid_event(event_id="good-0"),
        valid_event(user_id=""),
        valid_event(event_id="good-2"),
        valid_event(event_type=pb.EVENT_TYPE_UNSPECIFIED),
        valid_event(),
    ]
    channel, api = stub(server)
    with channel:
        response = api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=events), timeout=5)
    assert (response.accepted_count, response.rejected_count) == (3, 2)
    assert [r.index for r in response.results] == [0, 1, 2, 3, 4]
    statuses = [r.status for r in response.results]
    assert statuses == [
        pb.EVENT_STATUS_ACCEPTED,
        pb.EVENT_STATUS_REJECTED,
        pb.EVENT_STATUS_ACCEPTED,
        pb.EVENT_STATUS_REJECTED,
        pb.EVENT_STATUS_ACCEPTED,
    ]
    assert response.results[1].reason.startswith("user_id:")
    assert response.results[3].reason.startswith("event_type:")
    assert response.results[0].reason == ""
    assigned = response.results[4].event_id
    stored_ids = sorted(str(e["event_id"]) for e in stop_cleanly(server))
    assert stored_ids == sorted(["good-0", "good-2", assigned])


def test_malformed_bytes_are_invalid_argument(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/SendAdEventBatch", None, None)
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "adevents.v1.SendAdEventBatchRequest" in details(raised)


def test_invalid_utf8_is_invalid_argument(server: ServerProcess) -> None:
    # AdEvent.user_id (field 2) holding bytes that are not UTF-8.
    bad_event = b"\x12\x02\xc3\x28"
    request = b"\x0a" + bytes([len(bad_event)]) + bad_event
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/SendAdEvent", None, None)
        with pytest.raises(grpc.RpcError) as raised:
            raw(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_limits_are_invalid_argument_naming_the_limit(tmp_path: Path) -> None:
    with running_server(
        tmp_path, AEP_SERVER_MAX_BATCH_EVENTS="5", AEP_SERVER_MAX_MESSAGE_BYTES="64KiB"
    ) as server:
        channel, api = stub(server)
        with channel:
            with pytest.raises(grpc.RpcError) as too_many:
                api.SendAdEventBatch(
                    pb.SendAdEventBatchRequest(events=[valid_event()] * 6), timeout=5
                )
            big = valid_event(attributes={f"k{i}": "v" * 500 for i in range(30)})
            with pytest.raises(grpc.RpcError) as too_big:
                api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=[big] * 5), timeout=5)
            with pytest.raises(grpc.RpcError) as empty:
                api.SendAdEventBatch(pb.SendAdEventBatchRequest(), timeout=5)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.max_batch_events=5" in details(too_many)
    assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "server.max_message_bytes=65536" in details(too_big)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_queue_full_is_resource_exhausted_and_loses_nothing(tmp_path: Path) -> None:
    with running_server(
        tmp_path,
        AEP_QUEUE_MAX_EVENTS="10",
        AEP_BATCH_SIZE="1000",
        AEP_BATCH_FLUSH_INTERVAL="1h",
    ) as server:
        channel, api = stub(server)
        with channel:
            events = [valid_event(event_id=f"q{i}") for i in range(10)]
            accepted = api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=events), timeout=5)
            assert accepted.accepted_count == 10
            with pytest.raises(grpc.RpcError) as raised:
                api.SendAdEvent(pb.SendAdEventRequest(event=valid_event()), timeout=5)
            # A batch is refused before any per-event work, with the same status.
            with pytest.raises(grpc.RpcError) as batch_refused:
                api.SendAdEventBatch(
                    pb.SendAdEventBatchRequest(events=[valid_event(event_id="late")] * 3),
                    timeout=5,
                )
        assert batch_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue.max_events=10" in details(batch_refused)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue.max_events=10" in details(raised)
        stored = stop_cleanly(server)
    assert sorted(str(e["event_id"]) for e in stored) == sorted(f"q{i}" for i in range(10))


def test_committed_ack_mode_returns_after_the_write(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel:
        response = api.SendAdEventBatch(
            pb.SendAdEventBatchRequest(
                events=[valid_event(event_id=f"c{i}") for i in range(3)],
                ack_mode=pb.ACK_MODE_COMMITTED,
            ),
            timeout=10,
        )
        assert response.ack_mode == pb.ACK_MODE_COMMITTED
        # Already in the file, before any shutdown flush.
        assert sorted(str(e["event_id"]) for e in stored_events(server.events_dir)) == [
            "c0",
            "c1",
            "c2",
        ]
        with pytest.raises(grpc.RpcError) as durable:
            api.SendAdEvent(
                pb.SendAdEventRequest(event=valid_event(), ack_mode=pb.ACK_MODE_DURABLE), timeout=5
            )
    assert durable.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "write-ahead log" in details(durable)


def test_a_repeated_event_id_is_stored_once(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel:
        for _ in range(3):
            api.SendAdEvent(pb.SendAdEventRequest(event=valid_event(event_id="same")), timeout=5)
        api.SendAdEventBatch(
            pb.SendAdEventBatchRequest(events=[valid_event(event_id="same")] * 4), timeout=5
        )
    assert [e["event_id"] for e in stop_cleanly(server)] == ["same"]


def test_health_check_rpc_reports_state(server: ServerProcess) -> None:
    channel, api = stub(server)
    with channel:
        response = api.HealthCheck(pb.HealthCheckRequest(), timeout=5)
    assert response.status == pb.HealthCheckResponse.SERVING_STATUS_SERVING
    assert response.store_type == "file"
    assert response.store_healthy
    assert response.pending_events == 0
    assert response.server_time.seconds > 0


def test_reflection_lists_the_services_on_v1_and_v1alpha(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            call = channel.stream_stream(
                f"/{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
            ]
            listed, described, described_v1 = list(call(iter(requests), timeout=5))
            names = {s.name for s in listed.list_services_response.service}
            assert {
                SERVICE,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names
            assert described.file_descriptor_response.file_descriptor_proto, package
            assert described_v1.file_descriptor_response.file_descriptor_proto, package


def test_http_health_and_metrics(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.metrics_port}"
    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        assert response.status == 200
    channel, api = stub(server)
    with channel:
        api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=[valid_event()] * 3), timeout=5)
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "events_received_total" in body
    assert "events_processed_total" in body
    assert "batches_processed_total" in body
    assert "processing_errors_total" in body
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/nope", timeout=5)
    assert missing.value.code == 404
    missing.value.close()


def test_health_turns_not_serving_at_the_first_moment_of_shutdown(server: ServerProcess) -> None:
    seen: dict[str, list[int]] = {"": [], SERVICE: []}

    def watch(name: str) -> None:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            try:
                for update in health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=20):
                    seen[name].append(update.status)
            except grpc.RpcError:
                pass

    watchers = [threading.Thread(target=watch, args=(name,)) for name in seen]
    for thread in watchers:
        thread.start()
    deadline = time.monotonic() + 10
    while not all(seen.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    server.signal(signal.SIGTERM)
    for thread in watchers:
        thread.join(timeout=25)
    assert server.wait_exit() == 0
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for name, statuses in seen.items():
        assert statuses[0] == serving, name
        assert not_serving in statuses, (name, statuses)


@pytest.mark.parametrize("ack_mode", ["accepted", "durable", "committed"])
def test_every_event_acknowledged_before_sigterm_is_stored_exactly_once(
    tmp_path: Path, ack_mode: str
) -> None:
    """N acknowledged before SIGTERM -> exactly N distinct event_ids in the files."""
    server = ServerProcess(
        tmp_path,
        {
            "AEP_BATCH_FLUSH_INTERVAL": "1s",
            "AEP_ACK_MODE": ack_mode,
            "AEP_WAL_DIR": str(tmp_path / "wal"),
        },
    ).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def sender(worker: int) -> None:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            sequence = 0
            while not stop_sending.is_set():
                sequence += 1
                try:
                    if worker % 2:
                        single = api.SendAdEvent(
                            pb.SendAdEventRequest(event=valid_event()), timeout=5
                        )
                        ids = [single.event_id]
                    else:
                        events = [
                            valid_event(event_id=f"w{worker}-{sequence}-{i}") for i in range(50)
                        ]
                        batch = api.SendAdEventBatch(
                            pb.SendAdEventBatchRequest(events=events), timeout=5
                        )
                        ids = [
                            r.event_id
                            for r in batch.results
                            if r.status == pb.EVENT_STATUS_ACCEPTED
                        ]
                except grpc.RpcError:
                    if server.process is not None and server.process.poll() is not None:
                        return
                    continue
                with lock:
                    acknowledged.extend(ids)

    threads = [threading.Thread(target=sender, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # well inside the 1s flush interval: plenty is still queued
    server.signal(signal.SIGTERM)
    exit_code = server.wait_exit()
    stop_sending.set()
    for thread in threads:
        thread.join(timeout=10)
    assert exit_code == 0, server.log()
    stored_ids = [str(e["event_id"]) for e in stored_events(server.events_dir)]
    print(
        f"{ack_mode}: acknowledged={len(acknowledged)} stored={len(stored_ids)} "
        f"duplicates={len(stored_ids) - len(set(stored_ids))} "
        f"lost={len(set(acknowledged) - set(stored_ids))}"
    )
    assert len(acknowledged) > (1000 if ack_mode == "accepted" else 100)
    assert len(stored_ids) == len(set(stored_ids)), "an event was stored twice"
    assert set(stored_ids) == set(acknowledged)


def test_store_that_cannot_open_fails_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the events folder should be")
    server = ServerProcess(tmp_path, {"AEP_DATABASE_FILE_DIR": str(blocker / "events")})
    server.start(wait=False)
    assert server.wait_exit(30) == 3
    assert "cannot open the store" in server.log()


def test_logs_are_json_lines_with_level_and_message(server: ServerProcess) -> None:
    import json

    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert "serving" in messages
    assert "stopped" in messages
    stopped = next(line for line in lines if line["message"] == "stopped")
    assert stopped["level"] == "info"
    assert stopped["lost"] == 0
    assert stopped["drained"] is True


def test_text_logs_at_the_configured_level(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_LOGGING_FORMAT="text", AEP_LOGGING_LEVEL="warning") as server:
        assert server.stop() == 0
        assert "serving" not in server.log()  # an info line, below the level
    with running_server(tmp_path / "2", AEP_LOGGING_FORMAT="text") as server:
        assert server.stop() == 0
        assert " INFO    aep.app: serving grpc_port=" in server.log()


def test_the_binary_file_format_end_to_end(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_DATABASE_FILE_FORMAT="protobuf") as server:
        channel, api = stub(server)
        with channel:
            response = api.SendAdEventBatch(
                pb.SendAdEventBatchRequest(events=[valid_event(attributes={"k": "v"})] * 5),
                timeout=5,
            )
        stored = stop_cleanly(server)
        assert {path.suffix for path in server.events_dir.iterdir()} == {".binpb"}
    assert sorted(str(e["event_id"]) for e in stored) == sorted(
        r.event_id for r in response.results
    )
    assert all(e["attributes"] == {"k": "v"} for e in stored)


def test_queue_full_carries_retry_info_and_the_client_retries(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from google.rpc import error_details_pb2, status_pb2

    with running_server(
        tmp_path,
        AEP_QUEUE_MAX_EVENTS="300",
        AEP_BATCH_SIZE="100",
        AEP_BATCH_FLUSH_INTERVAL="50ms",
        AEP_BATCH_WORKER_POOL_SIZE="1",
        AEP_DATABASE_FILE_FSYNC="batch",
    ) as server:
        channel, api = stub(server)
        with channel:
            # Fill the queue faster than one fsyncing writer drains it.
            refused: grpc.RpcError | None = None
            for _ in range(200):
                try:
                    api.SendAdEventBatch(
                        pb.SendAdEventBatchRequest(events=[valid_event()] * 100), timeout=5
                    )
                except grpc.RpcError as error:
                    refused = error
                    break
        assert refused is not None, "the queue never filled"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        metadata: Any = refused.trailing_metadata() or ()  # (key, value) pairs at run time
        details = dict(metadata)["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(details)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert 0.05 <= info.retry_delay.ToNanoseconds() / 1e9 <= 5.0

        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "aep.tools.client",
                "--quiet",
                "--json",
                "--server",
                server.address,
                "--mode",
                "load",
                "--events",
                "20000",
                "--batch",
                "100",
                "--concurrent",
                "16",
                "--max-retries",
                "50",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        summary = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout
        assert summary["accepted"] == 20000
        assert summary["retries"] > 0  # it was refused and honoured RetryInfo
