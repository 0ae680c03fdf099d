"""OpenTelemetry: metrics for Prometheus at GET /metrics, and traces over OTLP.

Metrics. The hot path only bumps plain integers (aep.pipeline.ledger.Ledger); the
counters and gauges here are observable, read at scrape time, so they cost
the ingest path nothing. Histograms are recorded per store write and per
batch through the SDK, never per event. The RPC duration histogram is the
exception: it is kept by RpcDurations below, a collector in the same
registry, because an SDK record is a noticeable share of a unary RPC. Names
keep the reference design's (`events_received_total`,
`events_processed_total`, `batches_processed_total`, `processing_errors_total`,
`average_processing_latency`); every label has a small fixed set of values.
/metrics is rendered on the event loop, where all counters change, so one
scrape sees the conservation equation of aep.pipeline.ledger hold exactly.

Traces. Off (nothing installed, nothing recorded) unless an OTLP endpoint is
configured with the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; then every
AdEventService RPC gets a server span (opentelemetry-instrumentation-grpc,
continuing a W3C `traceparent` sent by the client) and every batch write a
span linked to the RPC spans whose events it carries. Sampling follows
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based, always on).
"""

from __future__ import annotations

import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any

import grpc
import prometheus_client
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from prometheus_client.core import HistogramMetricFamily

from aep import __version__
from aep.events.event_types import EVENT_TYPE_SHORT_NAMES
from aep.pipeline.core import Pipeline
from aep.pipeline.lane import Lane
from aep.pipeline.ledger import Ledger, StoreBook
from aep.pipeline.observer import PipelineObserver
from aep.settings import MetricsSettings

SERVICE_NAME = "ad-event-processor"

# Seconds, 0.1 ms to 10 s: sub-millisecond RPCs up to multi-second store stalls.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: tuple[float, ...] = (
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip

# Label values of events_received_total{event_type}: the enum number's short
# name; "unknown" holds unspecified or unknown numbers and events of requests
# refused as a whole.
EVENT_TYPE_LABELS: dict[int, str] = EVENT_TYPE_SHORT_NAMES
UNKNOWN_EVENT_TYPE = "unknown"

# The window of average_processing_latency (the reference design's gauge).
AVERAGE_WINDOW_S = 10.0

_Reading = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]


def _observe(read: _Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for value, attributes in read()]

    return callback


def received_by_type(ledger: Ledger) -> list[tuple[int, dict[str, str]]]:
    """events_received_total split by event type; the parts add up to events_received."""
    counts = ledger.events_received_by_type
    known = [(counts[number], {"event_type": label}) for number, label in EVENT_TYPE_LABELS.items()]
    typed = sum(count for count, _ in known)
    return [*known, (ledger.events_received - typed, {"event_type": UNKNOWN_EVENT_TYPE})]


class WindowedMean:
    """Event-weighted mean of the latencies of the last complete window.

    `average_processing_latency` of the reference design. A gauge has no
    time range of its own, so it reports the mean over the latest complete
    window of `window_s` seconds, and nothing when no event was written in it.
    """

    __slots__ = ("_count", "_end", "_last", "_sum", "_window")

    def __init__(self, window_s: float) -> None:
        self._window = window_s
        self._end = 0.0
        self._sum = 0.0
        self._count = 0
        self._last: tuple[float, float, int] | None = None  # (end, sum, count)

    def add(self, now: float, event_seconds: float, events: int) -> None:
        """`events` written at `now`; event_seconds: the sum of their latencies."""
        if now >= self._end:
            self._roll(now)
        self._sum += event_seconds
        self._count += events

    def _roll(self, now: float) -> None:
        if self._count:
            self._last = (self._end, self._sum, self._count)
        self._sum = 0.0
        self._count = 0
        self._end = now + self._window

    def read(self, now: float) -> float | None:
        if now >= self._end:
            self._roll(now)
        last = self._last
        if last is None or now - last[0] > self._window:
            return None
        return last[1] / last[2]


class RpcDurations:
    """`rpc_duration_seconds{method, code}`: a histogram kept by hand.

    Rendered exactly as the OpenTelemetry exporter renders its histograms
    (same buckets, labels and text), but an observation is a bisect and two
    additions instead of an SDK record's attribute cleaning and hashing.
    """

    name = "rpc_duration_seconds"
    documentation = (
        "AdEventService handling time per unary RPC, and per StreamAdEvents "
        "chunk from read to ack; by method and gRPC status code"
    )

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._les = [f"{bound}" for bound in bounds] + ["+Inf"]
        # (code name, method) -> [bucket counts..., sum]
        self._cells: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (code.name, method)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0] * (len(self._bounds) + 2)
        cell[bisect_left(self._bounds, seconds)] += 1
        cell[-1] += seconds

    def describe(self) -> Iterable[prometheus_client.Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=("code", "method"))

    def collect(self) -> Iterable[prometheus_client.Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=("code", "method"))
        for (code, method), cell in sorted(self._cells.items()):
            cumulative = list(accumulate(cell[:-1]))
            family.add_metric(
                [code, method], list(zip(self._les, cumulative, strict=True)), sum_value=cell[-1]
            )
        yield family


class _Metrics:
    """The MeterProvider, its Prometheus reader and the synchronous instruments."""

    def __init__(self, resource: Resource, ledger: Ledger, store_types: Sequence[str]) -> None:
        # A registry of our own: two services in one process (tests) do not
        # collide, and it carries the process collector (CPU, memory, fds).
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        seconds = ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)
        self.provider = MeterProvider(
            metric_readers=[reader],
            resource=resource,
            # Prometheus text has no exemplars, and collecting them slows every record.
            exemplar_filter=AlwaysOffExemplarFilter(),
            views=[
                View(instrument_name="*_seconds", aggregation=seconds),
                View(
                    instrument_name="batch_size_events",
                    aggregation=ExplicitBucketHistogramAggregation(BATCH_SIZE_BUCKETS),
                ),
            ],
        )
        self.meter = self.provider.get_meter("aep", __version__)
        self.stores = list(store_types)
        self.store = {"store": self.stores[0]}
        meter = self.meter
        self.rpc_durations = RpcDurations(SECONDS_BUCKETS)
        self.registry.register(self.rpc_durations)
        self.end_to_end = meter.create_histogram(
            "event_end_to_end_latency_seconds",
            unit="s",
            description="Per batch written: seconds from the admission (just after "
            "validation) of its oldest event to the durable write, the longest any of "
            "its events waited",
        )
        self.batch_size = meter.create_histogram(
            "batch_size_events", description="Events per batch written to the store"
        )
        self.store_write = meter.create_histogram(
            "store_write_duration_seconds",
            unit="s",
            description="Duration of each store write attempt, by outcome (ok|error)",
        )
        self.average = WindowedMean(AVERAGE_WINDOW_S)
        self._observable_counters(ledger)

    def _observable_counters(self, ledger: Ledger) -> None:
        books = [ledger.book(name) for name in self.stores]

        def per_store(read: Callable[[StoreBook], int]) -> _Reading:
            return lambda: [(read(book), {"store": book.store}) for book in books]

        counters: dict[str, tuple[str, _Reading]] = {
            "events_received": (
                "Events received in requests, valid or not, by event type",
                lambda: received_by_type(ledger),
            ),
            "events_replayed": (
                "Events re-submitted from the write-ahead log at start-up (received by an "
                "earlier process)",
                lambda: [(ledger.events_replayed, {})],
            ),
            "events_processed": (
                "Events written to the store (new, not duplicates)",
                per_store(lambda book: book.events_written),
            ),
            "batches_processed": (
                "Batches written to the store",
                per_store(lambda book: book.batches_written),
            ),
            "processing_errors": (
                "Failed store write attempts (each is retried, then dead-lettered)",
                per_store(lambda book: book.write_failures),
            ),
            "events_rejected": (
                "Events refused at the API, by reason (invalid|overload|unavailable)",
                lambda: [
                    (ledger.events_rejected_invalid, {"reason": "invalid"}),
                    (ledger.events_rejected_overload, {"reason": "overload"}),
                    (ledger.events_rejected_unavailable, {"reason": "unavailable"}),
                ],
            ),
            "requests_rejected": (
                "Requests refused whole before their events could be counted, by reason "
                "(malformed|too_large|empty); not part of the conservation equation",
                lambda: [
                    (count, {"reason": reason.value})
                    for reason, count in ledger.requests_rejected.items()
                ],
            ),
            "events_duplicate": (
                "Events not written because their event_id was already stored",
                per_store(lambda book: book.events_duplicate),
            ),
            "events_dead_lettered": (
                "Events written to the dead-letter file after the retry bound",
                per_store(lambda book: book.events_dead_lettered),
            ),
            "events_lost": (
                "Events that could be neither stored nor dead-lettered (should stay 0)",
                per_store(lambda book: book.events_lost),
            ),
            "events_spilled": (
                "Events put in a store's spill on disk because its lane was full (they are "
                "in flight, part of pipeline_pending_events, until written)",
                per_store(lambda book: book.events_spilled),
            ),
            "events_spill_recovered": (
                "Events an earlier run left in a store's spill, taken back at start-up (with "
                "events_replayed, received by an earlier process)",
                per_store(lambda book: book.events_spill_recovered),
            ),
            "wal_segments_quarantined": (
                "Write-ahead log segments found damaged at start-up (every intact record "
                "replayed, then the segment moved to quarantine/)",
                lambda: [(ledger.wal_segments_quarantined, {})],
            ),
            "wal_damaged_records": (
                "Damaged stretches of write-ahead log segments skipped at start-up (a run of "
                "adjacent damaged records counts once; their events were not replayed)",
                lambda: [(ledger.wal_damaged_records, {})],
            ),
            "wal_skipped_bytes": (
                "Bytes of write-ahead log segments skipped at start-up as damaged",
                lambda: [(ledger.wal_skipped_bytes, {})],
            ),
        }
        for name, (description, read) in counters.items():
            self.meter.create_observable_counter(
                name, callbacks=[_observe(read)], description=description
            )
        self.meter.create_observable_gauge(
            "wal_backlog_events",
            callbacks=[_observe(lambda: [(ledger.wal_backlog_events, {})])],
            description="Events earlier runs left in the write-ahead log, not yet replayed "
            "(not part of pipeline_pending_events)",
        )

    def watch(self, pipeline: Pipeline) -> None:
        lanes = pipeline.lanes

        def per_lane(read: Callable[[Lane], float]) -> _Reading:
            return lambda: [(read(lane), {"store": lane.name}) for lane in lanes]

        gauges: dict[str, tuple[str, _Reading]] = {
            "pipeline_pending_events": (
                "Accepted events not yet written to the store: in memory (the admission bound "
                "counts these) or in its spill",
                per_lane(lambda lane: lane.pending_events),
            ),
            "pipeline_queued_events": (
                "Accepted events waiting for a batch (part of pipeline_pending_events)",
                per_lane(lambda lane: lane.batcher.queued_events),
            ),
            "pipeline_pending_bytes": (
                "Request bytes of the pending events in memory",
                per_lane(lambda lane: lane.admission.pending_bytes),
            ),
            "pipeline_queue_capacity_events": (
                "queue.max_events",
                per_lane(lambda lane: lane.admission.max_events),
            ),
            "pipeline_queue_capacity_bytes": (
                "queue.max_bytes",
                per_lane(lambda lane: lane.admission.max_bytes),
            ),
            "spill_bytes": (
                "Bytes in the store's spill on disk (its lane was full); 0 without a spill",
                per_lane(lambda lane: lane.spill_bytes),
            ),
            "spill_capacity_bytes": (
                "spill.max_bytes (0: this store's lane does not spill)",
                per_lane(lambda lane: lane.spill.max_bytes if lane.spill is not None else 0),
            ),
            "store_up": (
                "1 while the last store write succeeded",
                per_lane(lambda lane: int(lane.health.state.healthy)),
            ),
            "average_processing_latency": (
                "Seconds from admission to durable write, mean over the events written in "
                f"the last complete {AVERAGE_WINDOW_S:g}s window (absent when none were)",
                self._average,
            ),
        }
        for name, (description, read) in gauges.items():
            self.meter.create_observable_gauge(
                name, callbacks=[_observe(read)], description=description
            )

    def _average(self) -> list[tuple[float, Mapping[str, str]]]:
        mean = self.average.read(time.monotonic())
        return [] if mean is None else [(mean, {})]


def span_exporter_from_environment(environ: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP exporter when the standard variables ask for one; None means tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("", "none"):
        return None
    if not (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    # Imported only when used: gRPC OTLP (endpoint, headers, TLS, timeout
    # from the standard OTEL_EXPORTER_OTLP_* variables).
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class _Tracing:
    def __init__(self, resource: Resource, exporter: SpanExporter, store_type: str) -> None:
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG) when it is not given.
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("aep", __version__)
        self.store_type = store_type

    def interceptor(self, service_name: str) -> grpc.aio.ServerInterceptor[Any, Any]:
        """Server spans for one service's RPCs (not health checks or reflection)."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        interceptor: grpc.aio.ServerInterceptor[Any, Any] = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=filters.service_name(service_name)
        )
        return interceptor

    @contextlib.contextmanager
    def write_span(
        self, contexts: Iterator[Any], events: int, store: str | None = None
    ) -> Iterator[None]:
        unique: dict[int, SpanContext] = {}
        for context in contexts:
            if context is not None and context.trace_flags.sampled:
                unique.setdefault(context.span_id, context)
        if not unique:  # no sampled RPC in the batch: no span either
            yield
            return
        with self.tracer.start_as_current_span(
            "write_batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root of its own
            kind=SpanKind.INTERNAL,
            links=[Link(context) for context in unique.values()],
            attributes={
                "aep.store": store or self.store_type,
                "aep.batch.events": events,
                "aep.batch.requests": len(unique),
            },
        ):
            yield


class _Observer(PipelineObserver):
    """Feeds the pipeline's reports into the histograms and the batch spans."""

    def __init__(
        self, metrics: _Metrics | None, tracing: _Tracing | None, store: str | None = None
    ) -> None:
        self._metrics = metrics
        self._tracing_impl = tracing
        self.tracing = tracing is not None
        self._store = store
        if metrics is not None:
            labels = metrics.store if store is None else {"store": store}
            self._ok = {**labels, "outcome": "ok"}
            self._error = {**labels, "outcome": "error"}

    def for_store(self, store: str) -> PipelineObserver:
        return _Observer(self._metrics, self._tracing_impl, store)

    def trace_context(self) -> Any:
        return trace.get_current_span().get_span_context()

    def write_span(
        self, contexts: Iterator[Any], events: int
    ) -> contextlib.AbstractContextManager[Any]:
        assert self._tracing_impl is not None
        return self._tracing_impl.write_span(contexts, events, self._store)

    def write_attempt(self, seconds: float, error: Exception | None) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.store_write.record(seconds, self._ok if error is None else self._error)
        if self.tracing:
            span = trace.get_current_span()
            if error is None:
                span.set_status(Status(StatusCode.OK))
            else:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def batch_written(self, events: int, oldest_s: float) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.batch_size.record(events)
            metrics.end_to_end.record(oldest_s)

    def submissions_written(self, event_seconds: float, events: int) -> None:
        # Plain arithmetic per batch; a histogram record per request would cost
        # as much as the rest of a unary RPC's telemetry together.
        if self._metrics is not None:
            self._metrics.average.add(time.monotonic(), event_seconds, events)


class Telemetry:
    """Owns the MeterProvider and the TracerProvider; shut it down last.

    Built before the pipeline (which reports through `observer`) and the
    servicer (`observe_rpc`); `watch(pipeline)` then adds the queue gauges.
    """

    def __init__(
        self,
        settings: MetricsSettings,
        ledger: Ledger,
        store_types: Sequence[str] | str,
        *,
        span_exporter: SpanExporter | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        resource = Resource.create({"service.name": SERVICE_NAME, "service.version": __version__})
        stores = [store_types] if isinstance(store_types, str) else list(store_types)
        self._metrics = _Metrics(resource, ledger, stores) if settings.enabled else None
        if span_exporter is None:
            span_exporter = span_exporter_from_environment(
                os.environ if environ is None else environ
            )
        self._tracing = (
            _Tracing(resource, span_exporter, stores[0]) if span_exporter is not None else None
        )
        self.observer: PipelineObserver = (
            _Observer(self._metrics, self._tracing)
            if self._metrics is not None or self._tracing is not None
            else PipelineObserver()
        )

    @property
    def observe_rpc(self) -> Callable[[str, grpc.StatusCode, float], None] | None:
        return self._metrics.rpc_durations.observe if self._metrics is not None else None

    def watch(self, pipeline: Pipeline) -> None:
        if self._metrics is not None:
            self._metrics.watch(pipeline)

    def server_interceptors(
        self, service_name: str
    ) -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
        return [self._tracing.interceptor(service_name)] if self._tracing is not None else []

    def render(self) -> bytes | None:
        """Prometheus text exposition; None when metrics are off."""
        if self._metrics is None:
            return None
        return prometheus_client.generate_latest(self._metrics.registry)

    def shutdown(self) -> None:
        if self._tracing is not None:
            self._tracing.provider.shutdown()  # exports what is still buffered
        if self._metrics is not None:
            self._metrics.provider.shutdown()
