"""Where the dashboard and the alert rules live (the chart carries synced copies)."""

from __future__ import annotations

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DASHBOARD = REPOSITORY / "dashboards" / "ad-event-processor.json"
ALERTS_DIR = REPOSITORY / "dashboards" / "alerts"
RULES = ALERTS_DIR / "ad-event-processor.rules.yaml"
CHART_RULES = REPOSITORY / "charts" / "ad-event-processor" / "files" / "alerts.yaml"
