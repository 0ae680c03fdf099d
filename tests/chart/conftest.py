from __future__ import annotations

import pytest
from chart_render import Helm, helm_binaries, in_ci


def _helm_params() -> list[object]:
    helms = helm_binaries()
    if not helms:
        return [pytest.param(None, id="no-helm")]
    return [pytest.param(helm, id=str(helm)) for helm in helms]


@pytest.fixture(params=_helm_params())
def helm(request: pytest.FixtureRequest) -> Helm:
    """Each Helm binary found (both Helm 3 and Helm 4 in CI)."""
    found: Helm | None = request.param
    if found is None:
        if in_ci():
            pytest.fail("CI=true but no Helm binary was found: .ci/install-helm installs them")
        pytest.skip("no Helm binary (bash .ci/install-helm installs Helm 3.18 and 4.1)")
    return found


@pytest.fixture
def newest_helm() -> Helm:
    """The newest Helm found, for tests whose rendering does not depend on the version
    (test_helm_3_and_helm_4_render_the_same_documents checks that it does not)."""
    helms = helm_binaries()
    if not helms:
        if in_ci():
            pytest.fail("CI=true but no Helm binary was found: .ci/install-helm installs them")
        pytest.skip("no Helm binary (bash .ci/install-helm installs Helm 3.18 and 4.1)")
    return helms[-1]
