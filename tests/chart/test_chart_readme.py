"""The values tables of the chart's READMEs are generated from the `## @param` comments of
its values.yaml files (npm's @bitnami/readme-generator-for-helm, installed by
.ci/install-helm into .ci/tools/readme-generator); they must be current.
`make chart-readme` regenerates them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.chart_render import CHART, REPO
from tests.helpers.support import skip_or_fail

GENERATOR = (
    REPO / ".ci" / "tools" / "readme-generator" / "node_modules" / ".bin" / "readme-generator"
)
CHARTS = [CHART, *sorted(path.parent for path in (CHART / "charts").glob("*/Chart.yaml"))]


def generate(values: Path, readme: Path) -> subprocess.CompletedProcess[str]:
    if not GENERATOR.exists():
        skip_or_fail("the README generator is not installed (make helm installs it)")
    return subprocess.run(
        [str(GENERATOR), "--values", str(values), "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("chart", CHARTS, ids=lambda chart: chart.name)
def test_the_values_table_is_current(chart: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(chart / "README.md", readme)
    result = generate(chart / "values.yaml", readme)
    assert result.returncode == 0, result.stdout + result.stderr
    assert readme.read_text() == (chart / "README.md").read_text(), (
        f"{(chart / 'README.md').relative_to(REPO)} is not what its values.yaml generates: "
        "run make chart-readme"
    )
    assert "| Name " in readme.read_text()


def test_a_value_without_its_comment_fails_the_generator(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text((CHART / "values.yaml").read_text() + "\nundocumented: true\n")
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    result = generate(values, readme)
    assert result.returncode != 0
    assert "Missing metadata for key: undocumented" in result.stdout + result.stderr


def test_a_stale_table_is_noticed(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    text = (CHART / "values.yaml").read_text()
    values.write_text(text.replace("replicaCount: 2", "replicaCount: 3"))
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    assert generate(values, readme).returncode == 0
    assert readme.read_text() != (CHART / "README.md").read_text()
