"""The chart's Prometheus config and rules (checked by promtool), its dashboards, and NOTES.txt
(whose grpcurl commands tests/integration/test_grpcurl.py runs with the real grpcurl).

promtool comes with Debian's prometheus package (.ci/system-deps installs it);
without it these tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.chart_render import CHART, KIND_VALUES, REPO, Helm, render
from tests.helpers.prometheus_process import (
    PROMETHEUS_HINT,
    PrometheusApi,
    kubernetes_sd_as_static,
    pod_meta_labels,
    running_prometheus,
)
from tests.helpers.support import ServerProcess, require_tool

FULLNAME = "aep-ad-event-processor"
ALERTS = CHART / "files" / "alerts.yaml"
SOURCE_ALERTS = REPO / "dashboards" / "alerts" / "ad-event-processor.rules.yaml"
DASHBOARDS = REPO / "dashboards"
# The chart's copies: the PrometheusRule's, the bundled Prometheus', the bundled Grafana's.
ALERT_COPIES = (ALERTS, CHART / "charts" / "prometheus" / "files" / "alerts.yaml")
CHART_DASHBOARDS = CHART / "charts" / "grafana" / "dashboards"


@pytest.fixture
def promtool() -> str:
    return require_tool("promtool", PROMETHEUS_HINT)


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", result.stdout + result.stderr)


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(x[5m]\n"
    )
    assert _promtool(promtool, "check", "rules", str(broken)).returncode != 0


def _prometheus_config(helm: Helm, values_files: tuple[Path, ...]) -> tuple[dict[str, Any], str]:
    manifests = render(helm, values_files)
    config = manifests.get("ConfigMap", "aep-prometheus")["data"]["prometheus.yml"]
    rules = manifests.get("ConfigMap", "aep-prometheus-rules")["data"]
    return yaml.safe_load(config), rules["alerts.yaml"]


def _server_job(config: dict[str, Any]) -> dict[str, Any]:
    return next(job for job in config["scrape_configs"] if job["job_name"] == "ad-event-processor")


# The renders with the bundled Prometheus: the defaults, and scenarios that change its config.
@pytest.mark.parametrize(
    "values_files",
    [(), (CHART / "ci" / "full-stack-values.yaml",), (KIND_VALUES,)],
    ids=["defaults", "full-stack", "kind"],
)
def test_bundled_prometheus_config_passes_promtool(
    helm: Helm, promtool: str, values_files: tuple[Path, ...], tmp_path: Path
) -> None:
    config, alerts = _prometheus_config(helm, values_files)
    (tmp_path / "alerts.yaml").write_text(alerts)
    # The pod mounts the rules ConfigMap at /etc/prometheus/rules: the same files here.
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yaml"]
    config["rule_files"] = [str(tmp_path / "*.yaml")]
    # Debian's promtool has no Kubernetes discovery: check the rest of the job
    # with a static target (test_objects checks the discovery block itself).
    jobs = config["scrape_configs"]
    jobs[jobs.index(_server_job(config))] = kubernetes_sd_as_static(
        _server_job(config), [("127.0.0.1:9464", pod_meta_labels("ads", "pod-1", "metrics"))]
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = _promtool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_bundled_prometheus_relabels_and_alerts_on_a_real_server(
    newest_helm: Helm, server: ServerProcess, tmp_path: Path
) -> None:
    """The chart's scrape job and rules in a real Prometheus, scraping a real server.

    Pod discovery is replaced by static targets with the labels it would attach:
    the server's metrics port (kept), its gRPC port (dropped: not "metrics") and
    a finished pod (dropped by phase).
    """
    require_tool("prometheus", PROMETHEUS_HINT)
    config, alerts = _prometheus_config(newest_helm, (CHART / "ci" / "full-stack-values.yaml",))
    (tmp_path / "alerts.yaml").write_text(alerts)
    job = kubernetes_sd_as_static(
        _server_job(config),
        [
            (f"127.0.0.1:{server.metrics_port}", pod_meta_labels("ads", "aep-1", "metrics")),
            (f"127.0.0.1:{server.grpc_port}", pod_meta_labels("ads", "aep-1", "grpc")),
            (
                f"127.0.0.1:{server.metrics_port}",
                pod_meta_labels("ads", "aep-0", "metrics", "Succeeded"),
            ),
        ],
    )
    local = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yaml")],
        "scrape_configs": [job],
    }
    with running_prometheus(local, tmp_path / "prometheus") as prometheus:
        api = PrometheusApi(prometheus.url)
        series = api.wait_for(
            'events_received_total{job="ad-event-processor"}', lambda result: len(result) > 0
        )
        assert {
            (s["metric"]["namespace"], s["metric"]["pod"], s["metric"]["node"]) for s in series
        } == {("ads", "aep-1", "node-1")}
        (target,) = api.active_targets()
        assert target["labels"]["job"] == "ad-event-processor"
        assert target["health"] == "up"
        rules = {rule["name"] for group in api.rule_groups() for rule in group["rules"]}
        assert rules == {
            rule["alert"]
            for group in yaml.safe_load(alerts)["groups"]
            for rule in group["rules"]
            if "alert" in rule
        }


def test_prometheus_rule_groups_pass_promtool(helm: Helm, promtool: str, tmp_path: Path) -> None:
    rule = render(helm, (CHART / "ci" / "servicemonitor-values.yaml",)).get(
        "PrometheusRule", FULLNAME
    )
    rules_file = tmp_path / "rule.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = _promtool(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_alert_rules_are_the_synced_copies() -> None:
    for copy in ALERT_COPIES:
        assert copy.read_bytes() == SOURCE_ALERTS.read_bytes(), (
            f"{copy.relative_to(REPO)} differs from {SOURCE_ALERTS.relative_to(REPO)}: "
            "run make sync-dashboards"
        )


def test_chart_dashboards_are_the_synced_copies() -> None:
    sources = sorted(path.name for path in DASHBOARDS.glob("*.json"))
    assert sources, "dashboards/ has no dashboard"
    assert sorted(path.name for path in CHART_DASHBOARDS.glob("*.json")) == sources, (
        "run make sync-dashboards"
    )
    for name in sources:
        assert (CHART_DASHBOARDS / name).read_bytes() == (DASHBOARDS / name).read_bytes(), (
            f"{CHART_DASHBOARDS.relative_to(REPO)}/{name} differs from dashboards/{name}: "
            "run make sync-dashboards"
        )


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda path: path.name)
def test_dashboards_use_the_datasource_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_main_dashboard_placeholder_contract() -> None:
    dashboard = json.loads((DASHBOARDS / "ad-event-processor.json").read_text())
    assert dashboard["uid"] == "ad-event-processor"


def _notes(helm: Helm, scenario: str = "full-stack") -> str:
    if helm.major < 4:
        pytest.skip(
            "Helm 3 renders NOTES.txt only against a cluster (install --dry-run=client needs one)"
        )
    result = helm.run(
        "install", "aep", str(CHART), "--namespace", "ads", "--dry-run=client",
        "--values", str(CHART / "ci" / f"{scenario}-values.yaml"),
    )  # fmt: skip
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_show_port_forward_and_grpcurl(helm: Helm) -> None:
    notes = _notes(helm)
    assert f"kubectl -n ads port-forward svc/{FULLNAME} 8080:8080 9464:9464" in notes
    assert "grpcurl -plaintext localhost:8080 list" in notes
    assert "port-forward svc/aep-prometheus 9090:9090" in notes
    assert "port-forward svc/aep-grafana 3000:3000" in notes
    assert "get secret aep-grafana -o jsonpath='{.data.admin-password}'" in notes
