"""Ingest through the public gRPC port, observed on the public /metrics port."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from deployment import Endpoints
from public_api import make_events, scrape, send_batch

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc


def _wait_for(timeout_s: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_batch_is_accepted_counted_and_written(endpoints: Endpoints) -> None:
    before = scrape(endpoints.metrics_url)
    events = make_events(250, "batch")
    response = send_batch(endpoints.grpc, events, pb.ACK_MODE_COMMITTED)
    assert (response.accepted_count, response.rejected_count) == (250, 0)
    assert [result.index for result in response.results] == list(range(250))
    assert [result.event_id for result in response.results] == [e.event_id for e in events]
    after = scrape(endpoints.metrics_url)
    assert after["events_received_total"] - before["events_received_total"] == 250
    # committed: acknowledged only once written, so the store counter already shows them
    assert after["events_processed_total"] - before["events_processed_total"] == 250
    assert after["batches_processed_total"] > before["batches_processed_total"]
    assert after["events_lost_total"] == 0


def test_a_replayed_event_id_is_stored_once(endpoints: Endpoints) -> None:
    (event,) = make_events(1, "replay")
    before = scrape(endpoints.metrics_url)
    with grpc.insecure_channel(endpoints.grpc) as channel:
        stub = pb_grpc.AdEventServiceStub(channel)
        for _ in range(3):
            response = stub.SendAdEvent(
                pb.SendAdEventRequest(event=event, ack_mode=pb.ACK_MODE_COMMITTED), timeout=30
            )
            assert response.event_id == event.event_id
    after = scrape(endpoints.metrics_url)
    assert after["events_processed_total"] - before["events_processed_total"] == 1
    assert after["events_duplicate_total"] - before["events_duplicate_total"] == 2


def test_invalid_event_is_rejected_with_a_reason(endpoints: Endpoints) -> None:
    before = scrape(endpoints.metrics_url)
    with grpc.insecure_channel(endpoints.grpc) as channel:
        stub = pb_grpc.AdEventServiceStub(channel)
        response = stub.SendAdEventBatch(
            pb.SendAdEventBatchRequest(events=[pb.AdEvent(user_id="u", ad_id="a")]), timeout=30
        )
    assert (response.accepted_count, response.rejected_count) == (0, 1)
    assert response.results[0].status == pb.EVENT_STATUS_REJECTED
    assert response.results[0].reason
    _wait_for(
        5,
        lambda: (
            scrape(endpoints.metrics_url)["events_rejected_total"] > before["events_rejected_total"]
        ),
    )
