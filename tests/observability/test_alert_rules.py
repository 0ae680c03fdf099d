"""The alert rules parse (promtool check rules) and behave as their unit tests say."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.helpers.prometheus_process import PROMETHEUS_HINT
from tests.helpers.support import require_tool
from tests.observability.paths import ALERTS_DIR, CHART_RULES, RULES

pytestmark = pytest.mark.observability


def test_rules_pass_promtool_check() -> None:
    promtool = require_tool("promtool", PROMETHEUS_HINT)
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    promtool = require_tool("promtool", PROMETHEUS_HINT)
    test_files = sorted(ALERTS_DIR.glob("*.test.yaml"))
    assert test_files
    result = subprocess.run(
        [promtool, "test", "rules", *(path.name for path in test_files)],
        cwd=ALERTS_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    """Each rule has at least one promtool case where it is expected to fire."""
    rules = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    fired: set[str] = set()
    for path in ALERTS_DIR.glob("*.test.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert rules - fired == set()
    assert all(
        rule["labels"]["severity"] in ("warning", "critical")
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    )


def test_the_chart_loads_these_rules() -> None:
    """charts/ad-event-processor/files/alerts.yaml is a copy (make sync-dashboards)."""
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), "run make sync-dashboards"
