"""Every dashboard query and alert expression against a real Prometheus scraping the service.

The service runs as a real process (ServerProcess); Debian's Prometheus
scrapes it every second while ad-event-client drives load and a small client
of our own sends invalid events, duplicates and streams, so every panel has
something to show. Then each panel query (Grafana variables substituted) must
return at least one series with a number in it, and each alert expression
must evaluate; Prometheus' own rule evaluation must report every rule healthy.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.prometheus_process import PROMETHEUS_HINT, PrometheusApi, running_prometheus
from tests.helpers.support import ServerProcess, require_tool, running_server, valid_event
from tests.observability.paths import DASHBOARD, RULES

pytestmark = [pytest.mark.integration, pytest.mark.observability]

JOB = "ad-event-processor"
RATE_WINDOW = "10s"  # what Grafana's $__rate_interval is for a 1s scrape, with room
CLIENT = Path(sys.executable).with_name("ad-event-client")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every panel target, variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    substitutions = {
        "$__rate_interval": RATE_WINDOW,
        "$__interval": "1s",
        "${job}": JOB,
        "$job": JOB,
        "${instance}": ".*",
        "$instance": ".*",
    }
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
            queries.append((f"{panel['title']} / {target['refId']}", expr))
    return queries


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_dashboard_model_is_what_grafana_and_the_chart_expect() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ad-event-processor"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needed in (
        "events_received_total",
        "events_rejected_total",
        "rpc_duration_seconds_bucket",
        "event_end_to_end_latency_seconds_bucket",
        "store_write_duration_seconds_bucket",
        "batch_size_events_bucket",
        "pipeline_pending_events",
        "pipeline_pending_bytes",
        "processing_errors_total",
        "events_duplicate_total",
        "events_dead_lettered_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "up{",
    ):
        assert needed in exprs, needed


def _odd_traffic(server: ServerProcess, stop: threading.Event) -> None:
    """Invalid events, duplicates, refused requests and streams, until stopped."""
    with grpc.insecure_channel(server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        round_ = 0
        while not stop.is_set():
            round_ += 1
            events = [
                valid_event(event_id=f"dup-{i}") for i in range(20)
            ]  # duplicates from round 2
            events += [valid_event(user_id="") for _ in range(5)]  # invalid
            events += [
                valid_event(event_type=pb.EVENT_TYPE_CONVERSION, price_micros=5, currency="EUR")
            ]
            api.SendAdEventBatch(pb.SendAdEventBatchRequest(events=events), timeout=5)
            with contextlib.suppress(grpc.RpcError):  # no event: INVALID_ARGUMENT
                api.SendAdEvent(pb.SendAdEventRequest(), timeout=5)
            chunks = [
                pb.StreamAdEventsRequest(
                    sequence=s,
                    events=[valid_event(event_id=f"s{round_}-{s}-{i}") for i in range(10)],
                )
                for s in range(1, 4)
            ]
            for _ in api.StreamAdEvents(iter(chunks), timeout=10):
                pass
            stop.wait(0.2)


def _prometheus_config(metrics_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }


@pytest.fixture
def loaded_service(tmp_path: Path) -> Iterator[tuple[ServerProcess, PrometheusApi]]:
    require_tool("prometheus", PROMETHEUS_HINT)
    with (
        running_server(tmp_path / "server", AEP_BATCH_FLUSH_INTERVAL="100ms") as server,
        running_prometheus(
            _prometheus_config(server.metrics_port), tmp_path / "prometheus"
        ) as process,
    ):
        prometheus = PrometheusApi(process.url)
        stop = threading.Event()
        odd = threading.Thread(target=_odd_traffic, args=(server, stop))
        odd.start()
        load_args = [
            "--mode",
            "load",
            "--events",
            "400000",
            "--batch",
            "50",
            "--concurrent",
            "4",
            "--quiet",
        ]
        load = subprocess.Popen(
            [str(CLIENT), "--server", server.address, *load_args], stdout=subprocess.DEVNULL
        )
        try:
            prometheus.wait_for(f'up{{job="{JOB}"}} == 1', bool)
            # Enough scrapes that every rate window holds several samples.
            clicks = f'events_received_total{{job="{JOB}", event_type="click"}}'
            prometheus.wait_for(f"count_over_time({clicks}[1m]) > 12", bool, timeout_s=60)
            yield server, prometheus
        finally:
            stop.set()
            odd.join(timeout=15)
            load.terminate()
            load.wait(timeout=15)


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(re.fullmatch(r"-?[0-9.e+-]+", sample["value"][1]) for sample in result)


def test_every_panel_and_alert_works_against_a_live_prometheus(
    loaded_service: tuple[ServerProcess, PrometheusApi],
) -> None:
    server, prometheus = loaded_service
    empty = []
    for name, expr in dashboard_queries():
        result = prometheus.query(expr)
        if not result or not _has_number(result):
            empty.append(f"{name}: {expr} -> {result}")
    assert empty == [], "dead panels:\n" + "\n".join(empty)

    # The template variables find the service.
    jobs = prometheus.get("/api/v1/label/job/values", **{"match[]": "events_received_total"})
    assert JOB in jobs
    instances = prometheus.get(
        "/api/v1/label/instance/values", **{"match[]": f'events_received_total{{job="{JOB}"}}'}
    )
    assert instances == [f"127.0.0.1:{server.metrics_port}"]

    # Alert expressions evaluate (a parse or type error would raise here) ...
    for _, expr in alert_expressions():
        prometheus.query(expr)
    # ... and Prometheus' own evaluation of the loaded rules reports them healthy.
    deadline = time.monotonic() + 10
    while True:
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        if len(rules) == len(alert_expressions()) and all(
            rule.get("lastEvaluation", "").startswith("20") for rule in rules.values()
        ):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert {name: rule["health"] for name, rule in rules.items()} == {
        name: "ok" for name, _ in alert_expressions()
    }
    # A healthy service under load: no alert is firing or pending.
    active = prometheus.get("/api/v1/alerts")["alerts"]
    assert active == [], active
    # The conservation check in PromQL: exactly 0 in every scrape.
    [drift] = prometheus.query(
        next(expr for name, expr in dashboard_queries() if name.startswith("Conservation drift"))
    )
    assert float(drift["value"][1]) == 0
