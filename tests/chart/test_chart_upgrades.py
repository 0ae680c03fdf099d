"""What a real API server found in the chart: StatefulSet claim templates changed by an
upgrade, ServiceMonitor durations its CRD refuses, claims left after uninstall, and
the Kubernetes versions the chart states.

There is no cluster here, so `lookup` returns nothing under `helm template`. The
claim-template guard is tested through the chart's own templates/upgrade-checks.yaml,
in a copy of the chart where its lookup reads "live" StatefulSets from files: each
is the StatefulSet as rendered with the installed values, with what the API server
adds (kind and apiVersion of each claim template, volumeMode, status, canonical
quantities).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.manifest_validation import validate_document
from tests.helpers.chart_render import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    Helm,
    render,
    render_error,
)

FULLNAME = "aep-ad-event-processor"
LOOKUP = 'lookup "apps/v1" "StatefulSet" $.Release.Namespace $set.name'
FROM_FILES = '$.Files.Get (printf "files/live/%s.yaml" $set.name) | fromYaml'


def as_live(
    statefulset: dict[str, Any], storage: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The StatefulSet as the API server returns it after install (server-side defaults)."""
    live = copy.deepcopy(statefulset)
    for claim in live["spec"].get("volumeClaimTemplates", []):
        claim["apiVersion"] = "v1"
        claim["kind"] = "PersistentVolumeClaim"
        claim["spec"]["volumeMode"] = "Filesystem"
        claim["status"] = {"phase": "Pending"}
        name = claim["metadata"]["name"]
        if storage and name in storage:
            claim["spec"]["resources"]["requests"]["storage"] = storage[name]
    live["status"] = {"replicas": 2, "availableReplicas": 2}
    return live


def chart_with_live_statefulsets(tmp_path: Path, live: Sequence[dict[str, Any]]) -> Path:
    """A copy of the chart whose upgrade check reads these StatefulSets instead of lookup."""
    chart = tmp_path / "ad-event-processor"
    shutil.copytree(CHART, chart)
    check = chart / "templates" / "upgrade-checks.yaml"
    text = check.read_text()
    assert LOOKUP in text, "templates/upgrade-checks.yaml no longer looks the StatefulSet up"
    check.write_text(text.replace(LOOKUP, FROM_FILES))
    (chart / "files" / "live").mkdir()
    for statefulset in live:
        path = chart / "files" / "live" / f"{statefulset['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(statefulset))
    return chart


def upgrade(helm: Helm, chart: Path, sets: Mapping[str, str]) -> Any:
    args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return helm.run(*args, check=False)


INSTALLED = {"wal.enabled": "true", "wal.persistence.type": "pvc", "config.ack.mode": "durable"}


@pytest.fixture
def installed(newest_helm: Helm, tmp_path: Path) -> Path:
    """The default stack plus the WAL on claims, as installed (three StatefulSets)."""
    statefulsets = render(newest_helm, sets=INSTALLED).of_kind("StatefulSet")
    names = sorted(s["metadata"]["name"] for s in statefulsets)
    assert names == [FULLNAME, "aep-mongodb", "aep-redis"]
    live = [as_live(s) for s in statefulsets]
    return chart_with_live_statefulsets(tmp_path, live)


@pytest.mark.parametrize(
    ("key", "statefulset", "claim"),
    [
        ("redis.persistence.size", "aep-redis", "data"),
        ("persistence.size", FULLNAME, "data"),
        ("wal.persistence.size", FULLNAME, "wal"),
    ],
)
def test_a_claim_size_change_is_refused_with_the_resize_steps(
    helm: Helm, installed: Path, key: str, statefulset: str, claim: str
) -> None:
    result = upgrade(helm, installed, {**INSTALLED, key: "64Gi"})
    assert result.returncode != 0, "an upgrade that resizes a claim template rendered"
    message = " ".join(result.stderr.split())
    assert f'{key}: the StatefulSet {statefulset} has its "{claim}" claims at' in message
    assert "this upgrade asks for 64Gi" in message
    assert f"kubectl -n {NAMESPACE} patch pvc {claim}-{statefulset}-0" in message
    assert '"storage":"64Gi"' in message
    assert f"kubectl -n {NAMESPACE} delete statefulset {statefulset} --cascade=orphan" in message
    assert "Resizing a claim" in message


def test_an_upgrade_with_the_installed_claims_renders(helm: Helm, installed: Path) -> None:
    assert upgrade(helm, installed, INSTALLED).returncode == 0
    # The same size spelt otherwise (the API server keeps the canonical form).
    same = {**INSTALLED, "redis.persistence.size": "8192Mi", "wal.persistence.size": "5120Mi"}
    result = upgrade(helm, installed, same)
    assert result.returncode == 0, result.stderr


def test_the_guard_reads_quantities_the_api_server_canonicalises(
    newest_helm: Helm, tmp_path: Path
) -> None:
    statefulset = render(newest_helm).get("StatefulSet", "aep-redis")
    live = as_live(statefulset, storage={"data": "8589934592"})  # 8Gi in bytes
    chart = chart_with_live_statefulsets(tmp_path, [live])
    assert upgrade(newest_helm, chart, {}).returncode == 0
    assert upgrade(newest_helm, chart, {"redis.persistence.size": "9Gi"}).returncode != 0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"redis.persistence.storageClass": "fast"},
            'redis.persistence.storageClass: the StatefulSet aep-redis has its "data" claims '
            'in StorageClass ""',
        ),
        (
            {"wal.persistence.accessModes[0]": "ReadWriteOncePod"},
            'wal.persistence.accessModes: the StatefulSet aep-ad-event-processor has its "wal"',
        ),
        (
            {"wal.enabled": "false", "config.ack.mode": "accepted"},
            "the StatefulSet aep-ad-event-processor has the claim templates [data, wal] and "
            "this upgrade asks for [data]",
        ),
    ],
)
def test_other_claim_template_changes_are_refused(
    helm: Helm, installed: Path, sets: dict[str, str], message: str
) -> None:
    result = upgrade(helm, installed, {**INSTALLED, **sets})
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())
    assert "--cascade=orphan" in result.stderr


def test_without_a_live_statefulset_nothing_is_compared(newest_helm: Helm) -> None:
    # helm template and helm install: lookup finds nothing, any size renders.
    manifests = render(newest_helm, sets={"redis.persistence.size": "64Gi"})
    claim = manifests.get("StatefulSet", "aep-redis")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "64Gi"


GOOD_DURATIONS = ["30s", "1m30s", "0s", "2h45m", "1d", "100ms", "1y2w3d4h5m6s7ms"]
BAD_DURATIONS = ["30s5m", "500ms1s", "1h1h", "5 m", "1.5s", "", "15"]


@pytest.mark.parametrize("interval", BAD_DURATIONS)
def test_service_monitor_durations_follow_the_crd_pattern(helm: Helm, interval: str) -> None:
    for key in ("serviceMonitor.interval", "serviceMonitor.scrapeTimeout"):
        error = render_error(helm, sets={"serviceMonitor.enabled": "true", key: interval})
        assert "schema" in error
        assert key.split(".")[1] in error


@pytest.mark.parametrize("interval", GOOD_DURATIONS)
def test_durations_the_crd_accepts_render(newest_helm: Helm, interval: str) -> None:
    sets = {"serviceMonitor.enabled": "true", "serviceMonitor.interval": interval}
    monitor = render(newest_helm, sets=sets).get("ServiceMonitor", FULLNAME)
    assert monitor["spec"]["endpoints"][0]["interval"] == interval
    validate_document(monitor, "1.37.0")


@pytest.mark.parametrize("interval", BAD_DURATIONS[:4])
def test_the_crd_subset_refuses_what_the_crd_refuses(newest_helm: Helm, interval: str) -> None:
    monitor = render(newest_helm, sets={"serviceMonitor.enabled": "true"}).get(
        "ServiceMonitor", FULLNAME
    )
    monitor["spec"]["endpoints"][0]["interval"] = interval
    with pytest.raises(Exception, match="does not match"):
        validate_document(monitor, "1.37.0")


def _retention(manifests: Any, name: str) -> dict[str, str]:
    return dict(manifests.get("StatefulSet", name)["spec"]["persistentVolumeClaimRetentionPolicy"])


def test_claim_retention_policies_are_explicit_and_retain_by_default(helm: Helm) -> None:
    retain = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    manifests = render(helm)
    assert _retention(manifests, FULLNAME) == retain
    assert _retention(manifests, "aep-redis") == retain


def test_the_wal_scenario_deletes_its_claims_on_uninstall(helm: Helm) -> None:
    manifests = render(helm, (CHART / "ci" / "wal-values.yaml",))
    server = manifests.get("StatefulSet", FULLNAME)
    assert {claim["metadata"]["name"] for claim in server["spec"]["volumeClaimTemplates"]} == {
        "data",
        "wal",
    }
    assert _retention(manifests, FULLNAME) == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_wal_retention_alone_sets_the_policy(newest_helm: Helm) -> None:
    sets = {
        **INSTALLED,
        "persistence.claim": "shared",
        "persistence.accessModes[0]": "ReadWriteMany",
        "wal.persistence.retentionPolicy.whenScaled": "Delete",
        "config.spill.policy": "never",  # a shared claim holds no spill
    }
    manifests = render(newest_helm, sets=sets)
    assert _retention(manifests, FULLNAME) == {"whenDeleted": "Retain", "whenScaled": "Delete"}


def test_one_stateful_set_cannot_have_two_retention_policies(helm: Helm) -> None:
    error = render_error(
        helm, sets={**INSTALLED, "wal.persistence.retentionPolicy.whenDeleted": "Delete"}
    )
    assert "persistence.retentionPolicy" in error
    assert "wal.persistence.retentionPolicy" in error
    assert "one persistentVolumeClaimRetentionPolicy" in error


@pytest.mark.parametrize(
    "key",
    [
        "wal.persistence.retentionPolicy.whenScaled",
        "persistence.retentionPolicy.whenDeleted",
        "redis.persistence.retentionPolicy.whenDeleted",
    ],
)
def test_the_schema_rejects_unknown_retention_policies(helm: Helm, key: str) -> None:
    error = render_error(helm, sets={key: "Keep"})
    assert "schema" in error
    assert "Keep" in error or "Retain" in error


def test_the_chart_states_its_kubernetes_range() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.27.0-0"
    for name in ("redis", "mongodb", "prometheus", "grafana"):
        subchart = yaml.safe_load((CHART / "charts" / name / "Chart.yaml").read_text())
        assert subchart["kubeVersion"] == chart["kubeVersion"], name


@pytest.mark.parametrize("kube_version", ["1.26.15", "1.25.0"])
def test_older_kubernetes_is_refused(helm: Helm, kube_version: str) -> None:
    result = helm.run("template", RELEASE, str(CHART), "--kube-version", kube_version, check=False)
    assert result.returncode != 0
    assert "kubeVersion: >=1.27.0-0 which is incompatible" in result.stderr


def test_the_ends_of_the_range_are_the_validated_versions() -> None:
    """tests/chart/test_chart_render.py validates every scenario at KUBE_VERSIONS: the
    chart's lower bound and the newest schemas kubernetes-validate carries."""
    from kubernetes_validate.utils import all_versions

    lower = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert lower == f">={KUBE_VERSIONS[0]}-0"
    newest = max(all_versions(), key=lambda v: tuple(int(n) for n in v.split(".")))
    assert KUBE_VERSIONS[-1] == newest
    for kube_version in KUBE_VERSIONS:
        assert not render_error_for_version(kube_version)


def render_error_for_version(kube_version: str) -> str:
    from tests.helpers.chart_render import require_helm

    result = require_helm()[-1].run(
        "template", RELEASE, str(CHART), "--kube-version", kube_version, check=False
    )
    return result.stderr if result.returncode else ""
