from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aep.observability.telemetry import SECONDS_BUCKETS, Telemetry, WindowedMean, received_by_type
from aep.pipeline.core import PipelineObserver
from aep.pipeline.ledger import Ledger, Rejection
from aep.settings import MetricsSettings, load_settings


def test_the_windowed_mean_reports_the_last_complete_window_weighted_by_events() -> None:
    mean = WindowedMean(10.0)
    assert mean.read(0.0) is None
    mean.add(0.0, 1.0, 1)
    mean.add(5.0, 0.1 * 9, 9)  # nine events that waited 0.1 s each
    assert mean.read(9.0) is None  # the window is not complete yet
    assert mean.read(10.0) == pytest.approx((1.0 + 0.9) / 10)
    assert mean.read(19.9) == pytest.approx(0.19)
    mean.add(21.0, 0.5, 1)
    assert mean.read(25.0) is None  # nothing written in the window that ended at 20
    assert mean.read(31.0) == pytest.approx(0.5)
    assert mean.read(45.0) is None  # idle: no stale value


def test_received_by_type_adds_up_to_received() -> None:
    ledger = Ledger()
    ledger.received(7, [0, 3, 4, 0], invalid=0)  # validated: 3 impressions, 4 clicks
    ledger.refused_whole(3, Rejection.INVALID)  # their types were not read
    split = {labels["event_type"]: value for value, labels in received_by_type(ledger)}
    assert split == {"impression": 3, "click": 4, "conversion": 0, "unknown": 3}


def test_histograms_are_in_seconds_with_buckets_from_0_1ms_to_10s() -> None:
    telemetry = Telemetry(MetricsSettings(), Ledger(), "file", environ={})
    try:
        assert telemetry.observe_rpc is not None
        telemetry.observe_rpc("SendAdEvent", grpc.StatusCode.OK, 0.0003)
        telemetry.observer.write_attempt(0.004, None)
        telemetry.observer.batch_written(250, 0.2)
        telemetry.observer.submissions_written(0.2 * 10, 10)
        text = telemetry.render()
        assert text is not None
        buckets: dict[str, list[str]] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.setdefault(sample.name, []).append(sample.labels["le"])
        expected = [*(str(float(b)) for b in SECONDS_BUCKETS), "+Inf"]
        for name in (
            "rpc_duration_seconds_bucket",
            "store_write_duration_seconds_bucket",
            "event_end_to_end_latency_seconds_bucket",
        ):
            assert buckets[name] == expected, name
        assert buckets["batch_size_events_bucket"][:3] == ["1.0", "5.0", "10.0"]
        assert "otel_scope_name" not in text.decode()  # no label noise on every series
        assert "process_cpu_seconds_total" in text.decode()
    finally:
        telemetry.shutdown()


def test_metrics_off_means_no_instruments_and_no_exposition() -> None:
    telemetry = Telemetry(MetricsSettings(enabled=False), Ledger(), "file", environ={})
    assert telemetry.render() is None
    assert telemetry.observe_rpc is None
    assert type(telemetry.observer) is PipelineObserver  # the pipeline's no-ops
    telemetry.shutdown()


def test_metrics_enabled_has_its_env_var() -> None:
    assert load_settings(environ={"AEP_METRICS_ENABLED": "false"}).metrics.enabled is False
    assert load_settings(environ={}).metrics.enabled is True


def test_rpc_durations_render_as_the_opentelemetry_exporter_renders_a_histogram() -> None:
    """The hand-kept histogram and an SDK histogram with the same buckets give the same text."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from prometheus_client import CollectorRegistry, generate_latest

    from aep.observability.telemetry import RpcDurations

    sdk_registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(scope_info_enabled=False, registry=sdk_registry)],
        views=[
            View(
                instrument_name="*", aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)
            )
        ],
    )
    sdk = provider.get_meter("test").create_histogram(
        RpcDurations.name, unit="s", description=RpcDurations.documentation
    )
    ours_registry = CollectorRegistry()
    ours = RpcDurations(SECONDS_BUCKETS)
    ours_registry.register(ours)
    observations = [
        ("SendAdEventBatch", grpc.StatusCode.OK, 0.0001),  # exactly on a bound
        ("SendAdEventBatch", grpc.StatusCode.OK, 0.00011),
        ("SendAdEvent", grpc.StatusCode.INVALID_ARGUMENT, 0.003),
        ("SendAdEvent", grpc.StatusCode.OK, 42.0),  # past the last bound
        ("StreamAdEvents", grpc.StatusCode.OK, 0.0),
    ]
    for method, code, seconds in observations:
        sdk.record(seconds, {"method": method, "code": code.name})
        ours.observe(method, code, seconds)

    def samples(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        text = generate_latest(registry).decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == "rpc_duration_seconds"
            for sample in family.samples
        }

    expected = samples(sdk_registry)
    assert len(expected) == 4 * (len(SECONDS_BUCKETS) + 3)  # 4 series: buckets, +Inf, count, sum
    assert samples(ours_registry) == expected
    provider.shutdown()
