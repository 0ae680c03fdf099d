"""dashboards/*.json and the chart's copies against Grafana's dashboard and panel JSON
schemas (tests/chart/grafana-schema/, copied from grafana/grafana-foundation-sdk: see
its README.md). No Grafana server can run here; this is the closest offline check of a
dashboard's structure: wrong types, unknown enum values, misspelt option names.

The dashboard model is validated as a whole; each panel's `options` and
`fieldConfig.defaults.custom` against the schema of its panel type, and each query
against the Prometheus query model. The schemas require fields Grafana fills with
defaults (a stat panel's justifyMode, a legend's calcs, a variable's current): the
dashboards set them. What is tolerated is listed in TOLERATED, each with its reason.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.helpers.chart_render import CHART, REPO

SCHEMAS = Path(__file__).parent / "grafana-schema"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
CHART_DASHBOARDS = sorted((CHART / "charts" / "grafana" / "dashboards").glob("*.json"))
PANEL_TYPES = ("timeseries", "stat", "gauge", "table")

# (JSON path with [*] for any index, validator keyword): why Grafana accepts it.
TOLERATED = {
    ("templating.list[*].query", "oneOf"): (
        "a Prometheus query variable's query is the object {query, refId} Grafana saves "
        "since 10; the SDK's schema types it as string or an object of objects"
    ),
}


@cache
def _schema(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text()))


def _validator(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    schema = _schema(name)
    if definition is not None:
        schema = {"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]}
    return jsonschema.Draft7Validator(schema)


def _path(prefix: str, error: jsonschema.ValidationError) -> str:
    """panels[3].options.legend: the place of a finding, as a reader would name it."""
    path = prefix
    for part in error.absolute_path:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _generic(path: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", path)


def findings(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, validator, message) of every schema finding, tolerated ones included."""
    found = [
        (_path("", e), str(e.validator), e.message)
        for e in _validator("dashboard").iter_errors(dashboard)
    ]
    for index, panel in enumerate(dashboard.get("panels", [])):
        where = f"panels[{index}]"
        kind = panel.get("type")
        if kind == "row":
            continue
        if kind not in PANEL_TYPES:
            found.append((f"{where}.type", "panel-type", f"no schema for panel type {kind!r}"))
            continue
        checks = [("options", panel.get("options", {}), "Options")]
        if "FieldConfig" in _schema(kind)["definitions"]:
            custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
            checks.append(("fieldConfig.defaults.custom", custom, "FieldConfig"))
        for part, value, definition in checks:
            for error in _validator(kind, definition).iter_errors(value):
                found.append((_path(f"{where}.{part}", error), str(error.validator), error.message))
        for number, target in enumerate(panel.get("targets", [])):
            for error in _validator("prometheus").iter_errors(target):
                path = _path(f"{where}.targets[{number}]", error)
                found.append((path, str(error.validator), error.message))
    return found


def untolerated(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [f for f in findings(dashboard) if (_generic(f[0]), f[1]) not in TOLERATED]


@pytest.mark.parametrize(
    "path",
    DASHBOARDS + CHART_DASHBOARDS,
    ids=lambda path: str(path.relative_to(REPO)),
)
def test_dashboard_matches_grafanas_schemas(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    problems = untolerated(dashboard)
    assert not problems, "\n".join(f"{p}: {m} ({v})" for p, v, m in problems)
    tolerated = {(_generic(p), v) for p, v, _ in findings(dashboard)}
    assert tolerated <= set(TOLERATED)
    print(f"{path.name}: {len(dashboard['panels'])} panels, tolerated: {sorted(tolerated)}")


def test_every_tolerated_finding_still_occurs() -> None:
    """A tolerance nothing needs any more must go."""
    seen = {
        (_generic(p), v)
        for path in DASHBOARDS
        for p, v, _ in findings(json.loads(path.read_text()))
    }
    assert set(TOLERATED) <= seen


def test_the_schemas_catch_what_grafana_would_refuse() -> None:
    dashboard = json.loads(DASHBOARDS[0].read_text())
    assert not untolerated(dashboard)
    stat = next(p for p in dashboard["panels"] if p["type"] == "stat")
    series = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    stat["options"]["colorMode"] = "rainbow"  # not an enum value
    series["options"]["legend"]["displayMode"] = "grid"
    series["fieldConfig"]["defaults"]["custom"] = {"lineWidht": 2}  # misspelt
    series["targets"][0]["format"] = "csv"
    dashboard["refresh"] = 30  # a string in the model
    dashboard["panels"].append({"type": "graph", "title": "old", "id": 999})
    paths = {p for p, _, _ in untolerated(dashboard)}
    index = {id(p): i for i, p in enumerate(dashboard["panels"])}
    assert f"panels[{index[id(stat)]}].options.colorMode" in paths
    assert f"panels[{index[id(series)]}].options.legend.displayMode" in paths
    assert f"panels[{index[id(series)]}].fieldConfig.defaults.custom" in paths
    assert f"panels[{index[id(series)]}].targets[0].format" in paths
    assert "refresh" in paths
    assert f"panels[{len(dashboard['panels']) - 1}].type" in paths


def test_the_schemas_are_the_reference_copies() -> None:
    """The copies in the repository match the reference they came from, when it is here
    (in CI: ../shared); the test itself never reads it."""
    reference = REPO.parent / "shared" / "reference" / "grafana-dashboard-schema"
    if not reference.is_dir():
        pytest.skip("the reference schemas are not on this machine")
    for source in sorted(reference.glob("*.json")):
        assert (SCHEMAS / source.name).read_bytes() == source.read_bytes(), source.name
