"""GET /metrics on the public metrics port: Prometheus text with the reference design's names."""

from __future__ import annotations

from deployment import Endpoints
from prometheus_client.parser import text_string_to_metric_families
from public_api import http_get

REFERENCE_COUNTERS = (
    "events_received",
    "events_processed",
    "batches_processed",
    "processing_errors",
)


def test_metrics_are_prometheus_text_with_the_reference_names(endpoints: Endpoints) -> None:
    status, content_type, body = http_get(f"{endpoints.metrics_url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(body)}
    for name in REFERENCE_COUNTERS:
        assert families[name].type == "counter", name
        assert f"# TYPE {name}_total counter" in body
    assert families["pipeline_pending_events"].type == "gauge"
    assert families["store_up"].samples[0].labels["store"] == endpoints.store
    assert families["store_up"].samples[0].value == 1
