"""OpenTelemetry metrics, exported for Prometheus at GET /metrics.

The hot path only bumps plain integers (aep.stats.IngestStats); the
instruments here are observable, read at scrape time, so metrics cost the
ingest path nothing. Names keep the reference design's
(`events_received_total`, `events_processed_total`, `batches_processed_total`,
`processing_errors_total`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from aep import __version__
from aep.pipeline import Pipeline
from aep.stats import IngestStats


def _observe(
    read: Callable[[], Iterable[tuple[int, dict[str, str]]]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for value, attributes in read()]

    return callback


class Telemetry:
    """Owns the MeterProvider; shut it down last."""

    def __init__(self, stats: IngestStats, pipeline: Pipeline, store_type: str) -> None:
        self._reader = PrometheusMetricReader()
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            resource=Resource.create(
                {"service.name": "ad-event-processor", "service.version": __version__}
            ),
        )
        meter = self._provider.get_meter("aep", __version__)
        store = {"store": store_type}
        counters: dict[str, tuple[str, Callable[[], Iterable[tuple[int, dict[str, str]]]]]] = {
            "events_received": (
                "Events received in requests, valid or not",
                lambda: [(stats.received, {})],
            ),
            "events_processed": (
                "Events written to the store (new, not duplicates)",
                lambda: [(stats.written, store)],
            ),
            "batches_processed": (
                "Batches written to the store",
                lambda: [(stats.batches_written, store)],
            ),
            "processing_errors": (
                "Failed store write attempts (each is retried, then dead-lettered)",
                lambda: [(stats.write_failures, store)],
            ),
            "events_rejected": (
                "Events refused at the API, by reason",
                lambda: [
                    (stats.rejected_invalid, {"reason": "invalid"}),
                    (stats.rejected_overload, {"reason": "overload"}),
                    (stats.rejected_unavailable, {"reason": "unavailable"}),
                ],
            ),
            "events_duplicate": (
                "Events not written because their event_id was already stored",
                lambda: [(stats.duplicates, store)],
            ),
            "events_dead_lettered": (
                "Events written to the dead-letter file after the retry bound",
                lambda: [(stats.dead_lettered, {})],
            ),
            "events_lost": (
                "Events that could be neither stored nor dead-lettered (should stay 0)",
                lambda: [(stats.lost, {})],
            ),
        }
        for name, (description, read) in counters.items():
            meter.create_observable_counter(
                name, callbacks=[_observe(read)], description=description
            )
        gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[int, dict[str, str]]]]]] = {
            "pipeline_pending_events": (
                "Accepted events not yet written (the admission bound counts these)",
                lambda: [(pipeline.pending_events, {})],
            ),
            "pipeline_pending_bytes": (
                "Request bytes of the pending events",
                lambda: [(pipeline.pending_bytes, {})],
            ),
            "pipeline_queue_capacity_events": (
                "queue.max_events",
                lambda: [(pipeline.max_events, {})],
            ),
            "store_up": (
                "1 while the last store write succeeded",
                lambda: [(int(pipeline.store_state.healthy), store)],
            ),
        }
        for name, (description, read) in gauges.items():
            meter.create_observable_gauge(name, callbacks=[_observe(read)], description=description)

    @staticmethod
    def render() -> bytes:
        """Prometheus text exposition of everything registered."""
        return prometheus_client.generate_latest(prometheus_client.REGISTRY)

    def shutdown(self) -> None:
        self._provider.shutdown()  # also unregisters the reader from the registry
