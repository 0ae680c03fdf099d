"""GET /metrics and the health endpoints of the real server, read as Prometheus would."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aep.observability.telemetry import SECONDS_BUCKETS
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.support import (
    Scrape,
    ServerProcess,
    running_server,
    scrape,
    stored_events,
    valid_event,
)

pytestmark = pytest.mark.integration


def batch(
    api: pb_grpc.AdEventServiceStub,
    events: list[pb.AdEvent],
    ack_mode: pb.AckMode.ValueType = pb.ACK_MODE_UNSPECIFIED,
) -> None:
    api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=events, ack_mode=ack_mode), timeout=5)


def refused(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code


def wait_for(server: ServerProcess, condition: str, check: Callable[[Scrape], bool]) -> Scrape:
    deadline = time.monotonic() + 15
    while True:
        current = scrape(server.metrics_port)
        if check(current):
            return current
        assert time.monotonic() < deadline, f"never {condition}: {current.conservation()}"
        time.sleep(0.1)


def test_conservation_holds_in_scrapes_under_a_mixed_load(tmp_path: Path) -> None:
    """received = processed + rejected + duplicates + dead-lettered + lost + in flight."""
    with running_server(
        tmp_path,
        AEP_QUEUE_MAX_EVENTS="200",
        AEP_BATCH_SIZE="1000",
        AEP_BATCH_FLUSH_INTERVAL="2s",
    ) as server:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            batch(api, [valid_event(event_id=f"d{i}") for i in range(100)])
            # 5 repeats of stored ids (duplicates), 5 invalid, 2 valid impressions.
            mixed = [valid_event(event_id=f"d{i}") for i in range(5)]
            mixed += [valid_event(user_id="") for _ in range(5)]
            mixed += [valid_event(event_type=pb.EVENT_TYPE_IMPRESSION) for _ in range(2)]
            batch(api, mixed)
            batch(api, [valid_event(event_type=99)])
            codes = []
            for call in (
                lambda: api.SendAdEvent(pb.SendAdEventRequest(), timeout=5),
                lambda: batch(api, [valid_event()] * 3, ack_mode=pb.ACK_MODE_DURABLE),
                lambda: batch(api, [valid_event() for _ in range(100)]),  # over queue.max_events
            ):
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                codes.append(refused(raised.value))
        assert codes == [
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ]

        loaded = scrape(server.metrics_port)  # within the 2s flush interval: in flight
        assert loaded.conservation() == {
            "received": 100 + 12 + 1 + 1 + 3 + 100,
            "replayed": 0,
            "processed": 0,
            "rejected": 5 + 1 + 1 + 3 + 100,
            "duplicates": 0,
            "dead_lettered": 0,
            "lost": 0,
            "in_flight": 107,
        }
        assert loaded.drift() == 0
        assert loaded.values("events_rejected_total", "reason") == {
            "invalid": 10,
            "overload": 100,
            "unavailable": 0,
        }
        assert loaded.values("events_received_total", "event_type") == {
            "impression": 2,
            "click": 100 + 10,
            "conversion": 0,
            # event_type 99, no event at all, and the two requests refused whole
            # before validation (durable without a log, over queue.max_events).
            "unknown": 1 + 1 + 3 + 100,
        }

        written = wait_for(server, "flushed", lambda s: s.total("pipeline_pending_events") == 0)
        assert written.drift() == 0
        assert written.total("events_processed_total", store="file") == 102
        assert written.total("events_duplicate_total", store="file") == 5
        assert written.total("batches_processed_total") == 1
        assert written.total("processing_errors_total") == 0
        assert written.total("store_up", store="file") == 1

        # Histograms: one observation per RPC, per batch, per store write.
        def count(name: str, **labels: str) -> float:
            return written.total(name + "_count", **labels)

        assert count("rpc_duration_seconds", method="SendAdEventBatch", code="OK") == 3
        assert count("rpc_duration_seconds", method="SendAdEvent", code="INVALID_ARGUMENT") == 1
        assert count("rpc_duration_seconds", code="FAILED_PRECONDITION") == 1
        assert count("rpc_duration_seconds", code="RESOURCE_EXHAUSTED") == 1
        assert count("batch_size_events") == 1
        assert written.total("batch_size_events_sum") == 107
        assert count("store_write_duration_seconds", store="file", outcome="ok") == 1
        assert count("event_end_to_end_latency_seconds") == 1  # one per batch
        # The flush interval is 2s: the batch's oldest event waited at least that long.
        assert written.total("event_end_to_end_latency_seconds_bucket", le="1.0") == 0
        assert written.total("event_end_to_end_latency_seconds_bucket", le="+Inf") == 1
        buckets = [labels["le"] for labels, _ in written.samples["rpc_duration_seconds_bucket"]]
        assert buckets[: len(SECONDS_BUCKETS) + 1] == [
            *(str(float(b)) for b in SECONDS_BUCKETS),
            "+Inf",
        ]
        # The process collector feeds the dashboard's CPU and memory panels.
        assert written.total("process_cpu_seconds_total") > 0
        assert written.total("process_resident_memory_bytes") > 0

        assert server.stop() == 0, server.log()
    assert len(stored_events(server.events_dir)) == 102


def test_conservation_holds_through_the_shutdown_drain(tmp_path: Path) -> None:
    """Scrapes taken while SIGTERM drains the queue all balance; nothing is left in flight."""
    server = ServerProcess(
        tmp_path, {"AEP_BATCH_FLUSH_INTERVAL": "1h", "AEP_BATCH_SIZE": "10000"}
    ).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            for round_ in range(20):
                events = [valid_event(event_id=f"r{round_}-{i}") for i in range(50)]
                events[0].user_id = ""  # one invalid in each batch
                events[1].event_id = "same"  # a duplicate from the second batch on
                batch(api, events)
        before = scrape(server.metrics_port)
        assert before.total("pipeline_pending_events") == 20 * 49
        assert before.drift() == 0
        scrapes: list[Scrape] = []
        server.signal(signal.SIGTERM)
        while server.process is not None and server.process.poll() is None:
            try:
                scrapes.append(scrape(server.metrics_port, timeout_s=1))
            except (OSError, ValueError):
                time.sleep(0.005)
        assert server.wait_exit() == 0, server.log()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert all(s.drift() == 0 for s in scrapes), [s.conservation() for s in scrapes]
    [stopped] = [
        line
        for line in (orjson.loads(raw) for raw in server.log().splitlines() if raw.startswith("{"))
        if line["message"] == "stopped"
    ]
    assert stopped["in_flight"] == 0
    assert stopped["received"] == 1000
    assert stopped["written"] == 20 * 48 + 1 == len(stored_events(server.events_dir))
    assert stopped["duplicates"] == 19
    assert stopped["rejected"] == 20


def test_metrics_can_be_turned_off_and_health_stays(tmp_path: Path) -> None:
    with running_server(tmp_path, AEP_METRICS_ENABLED="false") as server:
        base = f"http://127.0.0.1:{server.metrics_port}"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/metrics", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with grpc.insecure_channel(server.address) as channel:
            batch(pb_grpc.AdEventServiceStub(channel), [valid_event() for _ in range(5)])
        assert server.stop() == 0
    assert len(stored_events(server.events_dir)) == 5


def _http_status(port: int) -> int | None:
    """The status of GET /ready; None when refused (the process is gone)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)
    except OSError:
        return None


def _grpc_serving(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError:  # UNAVAILABLE once the server stopped taking RPCs
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def test_http_and_grpc_health_agree_through_shutdown(tmp_path: Path) -> None:
    """SERVING <=> 200, sampled over start, load and a shutdown that drains slowly.

    Each gRPC probe is taken between two HTTP probes; both only ever go from
    serving to not serving, so the gRPC answer must equal one of the HTTP
    answers around it, and both of them when they agree.
    """
    # A committed-mode RPC in flight holds the gRPC server's stop for up to
    # half the grace period while health already says NOT_SERVING.
    server = ServerProcess(
        tmp_path, {"AEP_BATCH_FLUSH_INTERVAL": "3s", "AEP_SHUTDOWN_GRACE_PERIOD": "10s"}
    ).start()
    samples: list[tuple[int | None, bool, int | None]] = []

    def sample(health: health_pb2_grpc.HealthStub) -> None:
        before = _http_status(server.metrics_port)
        serving = _grpc_serving(health)
        samples.append((before, serving, _http_status(server.metrics_port)))

    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            api = pb_grpc.AdEventServiceStub(channel)
            committed = threading.Thread(
                target=batch,
                args=(api, [valid_event() for _ in range(10)]),
                kwargs={"ack_mode": pb.ACK_MODE_COMMITTED},
            )
            committed.start()
            for _ in range(5):
                sample(health)
            server.signal(signal.SIGTERM)
            while server.process is not None and server.process.poll() is None:
                sample(health)
            committed.join(timeout=15)
        assert server.wait_exit() == 0, server.log()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    for before, grpc_serving, after in samples:
        http_before, http_after = before == 200, after == 200
        assert grpc_serving in (http_before, http_after), samples
        if http_before == http_after:
            assert grpc_serving == http_before, samples
    assert samples[0] == (200, True, 200)
    # The drain was long enough to see both say "not serving" while HTTP still answered.
    assert (503, False, 503) in samples, samples
    assert samples[-1][1] is False


def test_conservation_counts_events_replayed_from_the_write_ahead_log(tmp_path: Path) -> None:
    """Durable acks, SIGKILL, restart: the replayed events balance the new process' books."""
    env = {
        "AEP_WAL_DIR": str(tmp_path / "wal"),
        "AEP_BATCH_SIZE": "100000",
        "AEP_BATCH_FLUSH_INTERVAL": "1h",  # nothing reaches the store before the kill
    }
    first = ServerProcess(tmp_path, env).start()
    try:
        with grpc.insecure_channel(first.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            for round_ in range(5):
                events = [valid_event(event_id=f"w{round_}-{i}") for i in range(20)]
                batch(api, events, ack_mode=pb.ACK_MODE_DURABLE)
        durable = scrape(first.metrics_port)
        assert durable.conservation()["in_flight"] == 100
        assert durable.drift() == 0
    finally:
        assert first.process is not None
        first.process.kill()
        first.process.wait()
    second = ServerProcess(tmp_path, {**env, "AEP_BATCH_FLUSH_INTERVAL": "100ms"}).start()
    try:
        replayed = wait_for(
            second, "replayed and written", lambda s: s.total("events_processed_total") == 100
        )
        assert replayed.conservation()["received"] == 0
        assert replayed.conservation()["replayed"] == 100
        assert replayed.drift() == 0
        assert second.stop() == 0, second.log()
    finally:
        if second.process is not None and second.process.poll() is None:
            second.process.kill()
            second.process.wait()


def test_requests_refused_whole_are_counted(tmp_path: Path) -> None:
    """Refused before validation, and still in the books: their events as received and
    rejected (invalid), and requests whose events cannot be counted in
    requests_rejected_total by reason."""
    with running_server(
        tmp_path, AEP_SERVER_MAX_BATCH_EVENTS="10", AEP_SERVER_MAX_MESSAGE_BYTES="2048"
    ) as server:
        codes = []
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            raw_batch = channel.unary_unary(
                "/adevents.v1.AdEventService/SendAdEventBatch", None, None
            )
            stream = channel.stream_stream("/adevents.v1.AdEventService/StreamAdEvents", None, None)
            chunk = pb.StreamAdEventsRequest(sequence=1, events=[valid_event()] * 12)
            calls: list[Callable[[], object]] = [
                lambda: batch(api, [valid_event()] * 11),  # over server.max_batch_events
                lambda: batch(api, []),  # empty
                # an unknown ack mode
                lambda: batch(api, [valid_event()] * 3, ack_mode=pb.AckMode.ValueType(77)),
                lambda: raw_batch(b"\xff\xff\xff", timeout=5),  # not a request message
                lambda: batch(api, [valid_event(user_id="u" * 3000)]),  # over max_message_bytes
                lambda: list(stream(iter([chunk.SerializeToString()]), timeout=5)),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as raised:
                    call()
                codes.append(refused(raised.value))
            batch(api, [valid_event(), valid_event()])
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * len(calls)
        counted = scrape(server.metrics_port)
        terms = counted.conservation()
        requests = counted.values("requests_rejected_total", "reason")
        print(
            f"received={terms['received']:.0f} rejected={terms['rejected']:.0f} "
            f"requests rejected={requests}"
        )
        assert terms["received"] == 11 + 3 + 12 + 2
        assert counted.values("events_rejected_total", "reason")["invalid"] == 11 + 3 + 12
        assert counted.values("events_received_total", "event_type")["unknown"] == 11 + 3 + 12
        assert counted.drift() == 0
        assert requests == {"empty": 1, "malformed": 1, "too_large": 1}
        assert server.stop() == 0, server.log()
