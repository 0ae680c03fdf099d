from __future__ import annotations

import pytest

from tests.helpers.chart_render import Helm, helm_binaries, require_helm


def _helm_params() -> list[object]:
    helms = helm_binaries()
    if not helms:
        return [pytest.param(None, id="no-helm")]
    return [pytest.param(helm, id=str(helm)) for helm in helms]


@pytest.fixture(params=_helm_params())
def helm(request: pytest.FixtureRequest) -> Helm:
    """Each Helm binary found (both Helm 3 and Helm 4 in CI)."""
    if request.param is None:
        require_helm()  # skips, or fails in CI
    found: Helm = request.param
    return found


@pytest.fixture
def newest_helm() -> Helm:
    """The newest Helm found, for tests whose rendering does not depend on the version
    (test_helm_3_and_helm_4_render_the_same_documents checks that it does not)."""
    return require_helm()[-1]
