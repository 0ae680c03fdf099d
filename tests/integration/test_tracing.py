"""Traces: the real app in-process with an in-memory span exporter, real gRPC channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aep.app import EXIT_OK, Application
from aep.observability.telemetry import span_exporter_from_environment
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from aep.settings import load_settings
from tests.helpers.support import free_port, valid_event

pytestmark = pytest.mark.integration

METHOD = "/adevents.v1.AdEventService/"
TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_A = "00f067aa0ba902b7"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
PARENT_B = "b7ad6b7169203331"


def traceparent(trace_id: str, parent_id: str) -> tuple[tuple[str, str]]:
    return (("traceparent", f"00-{trace_id}-{parent_id}-01"),)


@dataclass
class RunningApp:
    app: Application
    address: str
    exporter: InMemorySpanExporter
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def finish(self) -> list[ReadableSpan]:
        self.stop.set()
        assert await asyncio.wait_for(self.task, 30) == EXIT_OK
        return list(self.exporter.get_finished_spans())


@pytest.fixture
async def traced_app(tmp_path: Path) -> AsyncIterator[RunningApp]:
    grpc_port = free_port()
    environ: Mapping[str, str] = {
        "AEP_SERVER_HOST": "127.0.0.1",
        "AEP_SERVER_PORT": str(grpc_port),
        "AEP_METRICS_HOST": "127.0.0.1",
        "AEP_METRICS_PORT": str(free_port()),
        "AEP_DATABASE_FILE_DIR": str(tmp_path / "events"),
        "AEP_DEAD_LETTER_DIR": str(tmp_path / "dead-letter"),
        # Four events make a batch: the two RPCs below end up in one write.
        "AEP_BATCH_SIZE": "4",
        "AEP_BATCH_FLUSH_INTERVAL": "30s",
        "AEP_SHUTDOWN_GRACE_PERIOD": "10s",
    }
    exporter = InMemorySpanExporter()
    app = Application(load_settings(environ=environ), span_exporter=exporter)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    for _ in range(200):
        if app.serving.serving:
            break
        assert not task.done(), "the app stopped during start-up"
        await asyncio.sleep(0.05)
    running = RunningApp(app, f"127.0.0.1:{grpc_port}", exporter, stop, task)
    try:
        yield running
    finally:
        if not task.done():
            stop.set()
            await asyncio.wait_for(task, 30)


def server_span(spans: list[ReadableSpan], method: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == METHOD + method and s.kind == SpanKind.SERVER]
    return span


async def test_rpc_spans_continue_the_callers_trace_and_the_batch_span_links_them(
    traced_app: RunningApp,
) -> None:
    assert traced_app.app.telemetry.observer.tracing
    async with grpc.aio.insecure_channel(traced_app.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        batch = await api.SendAdEventBatch(
            pb.SendAdEventBatchRequest(events=[valid_event() for _ in range(3)]),
            metadata=traceparent(TRACE_A, PARENT_A),
            timeout=5,
        )
        assert batch.accepted_count == 3
        await api.SendAdEvent(
            pb.SendAdEventRequest(event=valid_event()),
            metadata=traceparent(TRACE_B, PARENT_B),
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await api.SendAdEvent(pb.SendAdEventRequest(), timeout=5)
        # Health checks (kubelet probes) are not traced.
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    spans = await traced_app.finish()

    batch_rpc = server_span(spans, "SendAdEventBatch")
    assert f"{batch_rpc.context.trace_id:032x}" == TRACE_A
    assert batch_rpc.parent is not None and f"{batch_rpc.parent.span_id:016x}" == PARENT_A
    assert batch_rpc.attributes is not None
    assert batch_rpc.attributes["rpc.method"] == "SendAdEventBatch"
    [single_rpc, refused_rpc] = sorted(
        (s for s in spans if s.name == METHOD + "SendAdEvent"), key=lambda s: s.start_time or 0
    )
    assert f"{single_rpc.context.trace_id:032x}" == TRACE_B
    assert refused_rpc.attributes is not None
    assert (
        refused_rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    )
    assert not [s for s in spans if "grpc.health" in s.name]

    [write] = [s for s in spans if s.name == "write_batch"]
    assert write.kind == SpanKind.INTERNAL
    assert write.parent is None  # a root: it serves many traces, linked to each
    linked = {(link.context.trace_id, link.context.span_id) for link in write.links}
    assert linked == {
        (batch_rpc.context.trace_id, batch_rpc.context.span_id),
        (single_rpc.context.trace_id, single_rpc.context.span_id),
    }
    assert write.attributes is not None
    assert write.attributes["aep.batch.events"] == 4
    assert write.attributes["aep.store"] == "file"
    assert write.status.status_code == StatusCode.OK


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    assert span_exporter_from_environment({}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert span_exporter_from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    assert span_exporter_from_environment({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    traces_only = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}
    for environ in (endpoint, traces_only):
        exporter = span_exporter_from_environment(environ)
        assert exporter is not None
        assert type(exporter).__name__ == "OTLPSpanExporter"
        exporter.shutdown()


def test_an_untraced_app_installs_no_interceptor(tmp_path: Path) -> None:
    settings = load_settings(environ={"AEP_DATABASE_FILE_DIR": str(tmp_path / "events")})
    app = Application(settings)
    try:
        assert not app.telemetry.server_interceptors("adevents.v1.AdEventService")
        assert not app.telemetry.observer.tracing
    finally:
        app.telemetry.shutdown()
