"""helm lint --strict, helm template and Kubernetes schema validation of every scenario."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest

from tests.chart.manifest_validation import UnknownKindError, validate_document
from tests.helpers.chart_render import (
    CHART,
    KIND_VALUES,
    KUBE_VERSIONS,
    SCENARIOS,
    Helm,
    helm_binaries,
    render,
    render_error,
    render_text,
)
from tests.helpers.support import in_ci

# Every scenario of ci/ plus the defaults and the kind cluster's values.
VALUES_SETS = [pytest.param((), id="defaults")]
VALUES_SETS += [
    pytest.param((path,), id=path.name.removesuffix("-values.yaml")) for path in SCENARIOS
]
VALUES_SETS += [pytest.param((KIND_VALUES,), id="kind")]


def test_scenarios_cover_the_documented_setups() -> None:
    names = {path.name for path in SCENARIOS}
    for required in (
        "file-values.yaml",
        "minimal-values.yaml",
        "redis-values.yaml",
        "mongodb-values.yaml",
        "kafka-values.yaml",
        "redis-cluster-values.yaml",
        "multi-store-values.yaml",
        "external-values.yaml",
        "hpa-custom-metric-values.yaml",
        "servicemonitor-values.yaml",
        "wal-values.yaml",
        "secure-values.yaml",
    ):
        assert required in names


def test_ci_runs_helm_3_and_helm_4() -> None:
    majors = {helm.major for helm in helm_binaries()}
    if not in_ci() and majors != {3, 4}:
        pytest.skip(f"Helm majors found here: {sorted(majors)}; CI needs 3 and 4")
    assert majors == {3, 4}, f"CI must test the chart with Helm 3 and Helm 4, found {majors}"


@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_helm_lint_strict(helm: Helm, values_files: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in values_files:
        args += ["--values", str(path)]
    result = helm.run(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_files", VALUES_SETS)
def test_every_rendered_document_is_valid_kubernetes(
    helm: Helm, values_files: tuple[Path, ...], kube_version: str
) -> None:
    manifests = render(helm, values_files, kube_version=kube_version)
    assert len(manifests.docs) >= 5
    for doc in manifests:
        try:
            _validate(json.dumps(doc, sort_keys=True), kube_version)
        except Exception as error:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            pytest.fail(f"{name} is not valid for Kubernetes {kube_version}: {error}")


@functools.cache
def _validate(document: str, kube_version: str) -> None:
    """validate_document, once per distinct document: Helm 3 and 4 render the same ones
    (the next test), and scenarios share most of theirs."""
    validate_document(json.loads(document), kube_version)


def test_helm_3_and_helm_4_render_the_same_documents() -> None:
    helms = helm_binaries()
    if len({helm.major for helm in helms}) < 2:
        pytest.skip("needs Helm 3 and Helm 4")
    # Grafana's generated password differs between renders; pin it.
    sets = {"grafana.admin.password": "pinned-for-comparison"}
    for path in SCENARIOS:
        outputs = {render_text(helm, (path,), sets) for helm in helms}
        assert len(outputs) == 1, f"Helm versions render {path.name} differently"


def _deployment() -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_validator_rejects_what_kubernetes_rejects(kube_version: str) -> None:
    good = _deployment()
    validate_document(good, kube_version)

    unknown_field = copy.deepcopy(good)
    unknown_field["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # type: ignore[index]
    with pytest.raises(Exception, match="livenesProbe"):
        validate_document(unknown_field, kube_version)

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "two"  # type: ignore[index]
    with pytest.raises(Exception, match="two"):
        validate_document(wrong_type, kube_version)

    for api_version, kind in (
        ("apps/v1", "Deploymnet"),
        ("autoscaling/v2beta9", "HorizontalPodAutoscaler"),
    ):
        unknown_kind = {**good, "apiVersion": api_version, "kind": kind}
        with pytest.raises(UnknownKindError):
            validate_document(unknown_kind, kube_version)

    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "metrics"}]},
    }
    validate_document(monitor, kube_version)
    monitor["spec"]["endpoints"][0]["prot"] = "metrics"  # type: ignore[index]
    with pytest.raises(Exception, match="prot"):
        validate_document(monitor, kube_version)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"replicaCount": "-1"}, "replicaCount"),
        ({"database.type": "{redis,postgres}"}, "database"),
        ({"database.type": "7"}, "database"),
        ({"unknownKey": "1"}, "unknownKey"),
        ({"ports.grpc": "70000"}, "grpc"),
        ({"image.digest": "sha256:nothex"}, "digest"),
        ({"grafana.admin.password": "admin"}, "password"),
        ({"autoscaling.customMetric.name": "events/s"}, "name"),
        ({"service.type": "ExternalName"}, "type"),
    ],
)
def test_the_schema_rejects_bad_values(helm: Helm, sets: dict[str, str], message: str) -> None:
    error = render_error(helm, sets=sets)
    assert "schema" in error
    assert message in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"config.server.port": "9999"}, "config.server.port is set by the chart; set ports.grpc"),
        (
            {"config.database.file.dir": "/elsewhere"},
            "config.database.file.dir is set by the chart",
        ),
        (
            {"database.type": "redis", "redis.enabled": "false", "mongodb.enabled": "false"},
            "database.type=redis: set redis.enabled=true",
        ),
        (
            {"database.type": "mongodb", "redis.enabled": "false", "mongodb.enabled": "false"},
            "database.type=mongodb: set mongodb.enabled=true",
        ),
        ({"database.type": "file"}, "redis.enabled deploys a Redis that the server does not use"),
        (
            {"database.type": "redis"},
            "mongodb.enabled deploys a MongoDB that the server does not use",
        ),
        (
            {"terminationGracePeriodSeconds": "30"},
            "terminationGracePeriodSeconds (30) must exceed",
        ),
        ({"persistence.claim": "shared"}, "ReadWriteMany"),
        ({"persistence.existingClaim": "mine"}, "set persistence.claim=shared"),
        (
            {"autoscaling.enabled": "true", "autoscaling.targetCPUUtilizationPercentage": "null"},
            "needs at least one metric",
        ),
        ({"prometheus.enabled": "false"}, "grafana.enabled needs prometheus.enabled=true"),
        (
            {"prometheus.fullnameOverride": "metrics"},
            "the bundled Prometheus is http://metrics:9090",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    assert message in render_error(helm, sets=sets)


def test_a_single_replica_may_share_a_read_write_once_claim(helm: Helm) -> None:
    sets = {"persistence.claim": "shared", "replicaCount": "1", "autoscaling.enabled": "false"}
    sets |= {"database.type": "redis", "mongodb.enabled": "false"}  # one store: no spill
    manifests = render(helm, sets=sets)
    claim = manifests.get("PersistentVolumeClaim", "aep-ad-event-processor")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = manifests.server["spec"]["template"]["spec"]["volumes"]
    data = next(volume for volume in volumes if volume["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == "aep-ad-event-processor"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"wal.enabled": "yes"}, "enabled"),
        ({"wal.persistence.type": "hostPath"}, "type"),
        ({"wal.persistence.size": "lots"}, "size"),
        ({"wal.persistence.accessModes[0]": "ReadOnlyMany"}, "accessModes"),
    ],
)
def test_the_schema_rejects_bad_wal_values(helm: Helm, sets: dict[str, str], message: str) -> None:
    error = render_error(helm, sets=sets)
    assert "schema" in error
    assert "wal" in error
    assert message in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"tls.enabled": "on"}, "tls"),
        ({"tls.secretName": "Not_A_Secret"}, "secretName"),
        ({"tls.clientAuth": "1"}, "clientAuth"),
        ({"auth.defaultRateLimitRps": "-1"}, "defaultRateLimitRps"),
        ({"auth.secretKey": "a/b"}, "secretKey"),
        ({"tests.apiKeySecretName": "UPPER"}, "apiKeySecretName"),
        ({"tls.certFile": "/x"}, "certFile"),
    ],
)
def test_the_schema_rejects_bad_security_values(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    error = render_error(helm, sets=sets)
    assert "schema" in error
    assert message in error
