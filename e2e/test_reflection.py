"""Server reflection, as grpcurl uses it: list, describe, and a call built only
from the descriptors the server returns (no generated code on this side)."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from deployment import Endpoints

from tests.helpers.reflection_client import REFLECTION_SERVICES, ReflectionClient


@pytest.mark.parametrize("reflection_service", REFLECTION_SERVICES)
def test_reflection_lists_the_services(endpoints: Endpoints, reflection_service: str) -> None:
    with grpc.insecure_channel(endpoints.grpc) as channel:
        services = ReflectionClient(channel, reflection_service).list_services()
    assert {"adevents.v1.AdEventService", "grpc.health.v1.Health", reflection_service} <= set(
        services
    )


def test_reflection_describes_the_api(endpoints: Endpoints) -> None:
    with grpc.insecure_channel(endpoints.grpc) as channel:
        client = ReflectionClient(channel)
        methods = client.describe_service("adevents.v1.AdEventService")
        assert {"SendAdEvent", "SendAdEventBatch", "HealthCheck"} <= set(methods)
        event = client.pool.FindMessageTypeByName("adevents.v1.AdEvent")
    fields = {field.name: field.number for field in event.fields}
    assert {"event_id": 1, "user_id": 2, "ad_id": 3, "event_type": 4, "timestamp": 5}.items() <= (
        fields.items()
    )


def test_send_through_reflection_like_grpcurl(endpoints: Endpoints) -> None:
    event_id = f"e2e-reflection-{uuid.uuid4()}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = (
        '{"events": ['
        f'{{"event_id": "{event_id}", "user_id": "u", "ad_id": "a", '
        f'"event_type": "EVENT_TYPE_IMPRESSION", "timestamp": "{stamp}"}},'
        f'{{"user_id": "u", "ad_id": "a", "event_type": "EVENT_TYPE_UNSPECIFIED", '
        f'"timestamp": "{stamp}"}}'
        "]}"
    )
    with grpc.insecure_channel(endpoints.grpc) as channel:
        response = ReflectionClient(channel).call(
            "adevents.v1.AdEventService/SendAdEventBatch", body
        )
    assert response["accepted_count"] == 1
    assert response["rejected_count"] == 1
    accepted, rejected = sorted(response["results"], key=lambda r: r.get("index", 0))
    assert accepted["event_id"] == event_id
    assert accepted["status"] == "EVENT_STATUS_ACCEPTED"
    assert rejected["index"] == 1
    assert "event_type" in rejected["reason"]
