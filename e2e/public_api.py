"""Small clients for the deployment's public ports: gRPC ingest, /metrics, /health."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc


def make_events(count: int, label: str) -> list[pb.AdEvent]:
    """count valid events with fresh, unique event_ids (e2e-<label>-<uuid>-<n>)."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    prefix = f"e2e-{label}-{uuid.uuid4()}"
    return [
        pb.AdEvent(
            event_id=f"{prefix}-{index}",
            user_id=f"user-{index % 7}",
            ad_id=f"ad-{index % 3}",
            event_type=pb.EVENT_TYPE_CLICK,
            timestamp=stamp,
        )
        for index in range(count)
    ]


def send_batch(
    address: str, events: list[pb.AdEvent], ack_mode: pb.AckMode.ValueType = pb.ACK_MODE_UNSPECIFIED
) -> pb.SendAdEventBatchResponse:
    with grpc.insecure_channel(address) as channel:
        response: pb.SendAdEventBatchResponse = pb_grpc.AdEventServiceStub(
            channel
        ).SendAdEventBatch(pb.SendAdEventBatchRequest(events=events, ack_mode=ack_mode), timeout=30)
    return response


def http_get(url: str) -> tuple[int, str, str]:
    """(status, content type, body); HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def scrape(metrics_url: str) -> dict[str, float]:
    """Every sample of GET /metrics summed over its labels, by sample name."""
    status, _, body = http_get(f"{metrics_url}/metrics")
    assert status == 200, status
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
