"""Prometheus' HTTP query API: it scrapes the service, loads the chart's alert
rules, and the queries of k8s/prometheus-adapter-values.yaml (the HPA's custom
metric) give per-pod values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from deployment import ALERTS, JOB, Endpoints
from public_api import make_events, send_batch

from tests.helpers.prometheus_process import PrometheusApi

ADAPTER_VALUES = Path(__file__).resolve().parents[1] / "k8s" / "prometheus-adapter-values.yaml"


def _send(endpoints: Endpoints, count: int) -> None:
    assert send_batch(endpoints.grpc, make_events(count, "prometheus")).accepted_count == count


def _total(result: list[dict[str, Any]]) -> float:
    return sum(float(series["value"][1]) for series in result)


def test_prometheus_scrapes_the_service(prometheus: PrometheusApi) -> None:
    up = prometheus.wait_for(f'up{{job="{JOB}"}}', lambda result: len(result) > 0)
    assert all(series["value"][1] == "1" for series in up), up
    for series in up:
        assert series["metric"]["namespace"]
        assert series["metric"]["pod"]


def test_prometheus_sees_ingested_events(endpoints: Endpoints, prometheus: PrometheusApi) -> None:
    query = f'sum(events_received_total{{job="{JOB}"}})'
    before = _total(prometheus.wait_for(query, lambda result: len(result) > 0))
    _send(endpoints, 300)
    prometheus.wait_for(query, lambda result: _total(result) >= before + 300)


def test_alert_rules_are_loaded_and_quiet(prometheus: PrometheusApi) -> None:
    expected = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    rules = {rule["name"]: rule for group in prometheus.rule_groups() for rule in group["rules"]}
    assert expected <= set(rules)
    for name in expected:
        assert rules[name]["health"] == "ok", rules[name]
        assert rules[name]["state"] == "inactive", rules[name]


def _adapter_rules() -> list[dict[str, Any]]:
    return list(yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"])


def test_adapter_queries_give_per_pod_values(
    endpoints: Endpoints, prometheus: PrometheusApi
) -> None:
    """What prometheus-adapter would run for the HPA's custom metric, pod by pod."""
    _send(endpoints, 200)
    # The pod that received the most events (with several replicas, the one the
    # suite's gRPC connection reaches).
    (busiest,) = prometheus.wait_for(
        'topk(1, events_received_total{namespace!="",pod!=""})', lambda result: len(result) == 1
    )
    namespace, pod = busiest["metric"]["namespace"], busiest["metric"]["pod"]
    for rule in _adapter_rules():
        series = prometheus.wait_for(rule["seriesQuery"], lambda result: len(result) > 0)
        name = series[0]["metric"]["__name__"]
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod="{pod}"')
            .replace("<<.GroupBy>>", "pod")
        )
        result = prometheus.wait_for(query, lambda result: len(result) == 1)
        assert result[0]["metric"] == {"pod": pod}
        if rule["name"]["as"] == "aep_events_received_per_second":
            prometheus.wait_for(query, lambda result: float(result[0]["value"][1]) > 0)
