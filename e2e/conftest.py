"""Fixtures: the deployment under test (see deployment.py) and its Prometheus."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from deployment import Endpoints, local_stack, url_of

from tests.helpers.prometheus_process import PROMETHEUS_HINT, PrometheusApi
from tests.helpers.support import require_tool


@pytest.fixture(scope="session")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    store = os.environ.get("AEP_E2E_STORE", "file")
    if os.environ.get("AEP_E2E_GRPC"):
        missing = [n for n in ("AEP_E2E_METRICS", "AEP_E2E_PROMETHEUS") if not os.environ.get(n)]
        if missing:
            pytest.fail(f"AEP_E2E_GRPC is set, so set {' and '.join(missing)} too")
        yield Endpoints(
            grpc=os.environ["AEP_E2E_GRPC"],
            metrics_url=url_of(os.environ["AEP_E2E_METRICS"]),
            prometheus_url=url_of(os.environ["AEP_E2E_PROMETHEUS"]),
            store=store,
            local=False,
        )
        return
    require_tool("prometheus", PROMETHEUS_HINT)
    yield from local_stack(tmp_path_factory.mktemp("e2e"), store)


@pytest.fixture(scope="session")
def prometheus(endpoints: Endpoints) -> PrometheusApi:
    return PrometheusApi(endpoints.prometheus_url)
