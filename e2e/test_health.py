"""Health through the public ports: grpc.health.v1 (what kubelet probes), the
service's HealthCheck, the CLI's health mode (what `helm test` runs) and HTTP /health."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from deployment import Endpoints
from grpc_health.v1 import health_pb2, health_pb2_grpc
from public_api import http_get

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc


@pytest.mark.parametrize("service", ["", "adevents.v1.AdEventService"])
def test_grpc_health_is_serving(endpoints: Endpoints, service: str) -> None:
    with grpc.insecure_channel(endpoints.grpc) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_of_an_unknown_service_is_not_found(endpoints: Endpoints) -> None:
    with grpc.insecure_channel(endpoints.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_check_rpc_reports_the_store(endpoints: Endpoints) -> None:
    with grpc.insecure_channel(endpoints.grpc) as channel:
        response = pb_grpc.AdEventServiceStub(channel).HealthCheck(
            pb.HealthCheckRequest(), timeout=10
        )
    assert response.status == pb.HealthCheckResponse.SERVING_STATUS_SERVING
    assert response.store_type == endpoints.store
    assert response.store_healthy


def test_client_health_mode_exits_zero(endpoints: Endpoints) -> None:
    client = Path(sys.executable).parent / "ad-event-client"
    result = subprocess.run(
        [str(client), "--server", endpoints.grpc, "--mode", "health"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "grpc_health=SERVING" in result.stdout


def test_http_health_and_unknown_path(endpoints: Endpoints) -> None:
    assert http_get(f"{endpoints.metrics_url}/health")[0] == 200
    assert http_get(f"{endpoints.metrics_url}/no-such-path")[0] == 404
