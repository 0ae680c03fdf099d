"""The default install is the design brief's stack, each part can be switched off or
pointed elsewhere, and the bundled parts are local subcharts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from aep.settings import Settings, StoreType, load_settings
from tests.chart.manifest_validation import validate_document
from tests.helpers.chart_render import (
    CHART,
    Helm,
    Manifests,
    container,
    render,
    render_error,
    selects,
)

FULLNAME = "aep-ad-event-processor"
SUBCHARTS = ("redis", "mongodb", "prometheus", "grafana")


def _settings(manifests: Manifests, tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(manifests.config_text())
    return load_settings(path, environ=manifests.server_environ())


def _pod_labels(workload: dict[str, object]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])  # type: ignore[index]


def test_the_default_install_is_the_whole_stack(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm)
    server = manifests.server
    settings = _settings(manifests, tmp_path)

    # HPA on CPU, owning the server's replica count.
    hpa = manifests.get("HorizontalPodAutoscaler", FULLNAME)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (server["kind"], FULLNAME)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in server["spec"]

    # The bundled MongoDB and Redis are the stores: every event goes to both.
    assert settings.database.type == (StoreType.MONGODB, StoreType.REDIS)
    assert manifests.server_environ()["AEP_DATABASE_TYPE"] == "mongodb,redis"
    redis = manifests.workload("redis")
    redis_service = manifests.get("Service", "aep-redis")
    assert settings.database.redis.url == "redis://aep-redis:6379/0"
    assert selects(redis_service["spec"]["selector"], _pod_labels(redis))
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    mongodb = manifests.workload("mongodb")
    mongodb_service = manifests.get("Service", "aep-mongodb")
    assert settings.database.mongodb.uri == "mongodb://aep-mongodb:27017"
    assert settings.database.mongodb.database == "ad_events"
    assert selects(mongodb_service["spec"]["selector"], _pod_labels(mongodb))
    assert 27017 in [port["port"] for port in mongodb_service["spec"]["ports"]]
    assert mongodb["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert settings.spills  # a full lane spills to the pod's claim

    # Prometheus scrapes the server pods and loads the alert rules.
    prometheus = manifests.workload("prometheus")
    config = yaml.safe_load(manifests.get("ConfigMap", "aep-prometheus")["data"]["prometheus.yml"])
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "ad-event-processor",
        "prometheus",
    ]
    rules = yaml.safe_load(
        manifests.get("ConfigMap", "aep-prometheus-rules")["data"]["alerts.yaml"]
    )
    assert any("alert" in rule for group in rules["groups"] for rule in group["rules"])
    volumes = {v["name"]: v for v in prometheus["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == "aep-prometheus-rules"

    # Grafana with the dashboard, on the bundled Prometheus.
    grafana = manifests.workload("grafana")
    provisioning = manifests.get("ConfigMap", "aep-grafana")["data"]
    (datasource,) = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    assert datasource["url"] == "http://aep-prometheus:9090"
    dashboards = manifests.get("ConfigMap", "aep-grafana-dashboards")["data"]
    assert json.loads(dashboards["ad-event-processor.json"])["uid"] == "ad-event-processor"
    env = {
        e["name"]: e.get("value")
        for e in container(grafana["spec"]["template"]["spec"], "grafana")["env"]
    }
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].endswith("/ad-event-processor.json")

    # helm test is part of the install.
    (test_pod,) = manifests.of_kind("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_no_acknowledged_event_lives_only_in_an_empty_dir(helm: Helm, tmp_path: Path) -> None:
    """Every directory where the server keeps events (store files, dead letters, WAL) is
    on a claim; Redis keeps its append-only file on a claim too."""
    manifests = render(helm)
    settings = _settings(manifests, tmp_path)
    server = manifests.server
    pod = server["spec"]["template"]["spec"]
    claims = {claim["metadata"]["name"] for claim in server["spec"]["volumeClaimTemplates"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = container(pod, "server")["volumeMounts"]
    directories = [settings.dead_letter.dir, settings.database.file.dir, settings.spill.dir]
    if settings.wal.dir is not None:
        directories.append(settings.wal.dir)
    for directory in directories:
        mount = max(
            (m for m in mounts if Path(directory).is_relative_to(m["mountPath"])),
            key=lambda m: len(m["mountPath"]),
        )
        assert mount["name"] in claims, f"{directory} is on {volumes.get(mount['name'])}"
        assert mount["name"] not in volumes
    # A pod removed by the HPA or a rollout leaves its claim for the pod that comes back.
    assert server["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    redis = manifests.workload("redis")
    redis_pod = redis["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in redis_pod.get("volumes", [])}
    assert "--appendonly" in container(redis_pod, "redis")["args"]


def test_every_part_can_be_switched_off(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, (CHART / "ci" / "minimal-values.yaml",))
    assert [w["metadata"]["name"] for w in manifests.workloads()] == [FULLNAME]
    assert manifests.server["kind"] == "Deployment"
    assert manifests.of_kind("HorizontalPodAutoscaler") == []
    assert manifests.of_kind("NetworkPolicy") == []
    assert manifests.of_kind("Pod") == []
    assert manifests.of_kind("Secret") == []
    assert _settings(manifests, tmp_path).database.type == (StoreType.FILE,)
    pod = manifests.server["spec"]["template"]["spec"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert "emptyDir" in data


def test_each_part_can_point_at_an_existing_service(helm: Helm, tmp_path: Path) -> None:
    sets = {
        "redis.enabled": "false",
        "externalRedis.url": "rediss://redis.data.svc:6380/0",
        "mongodb.enabled": "false",
        "externalMongodb.uri": "mongodb://mongodb.data.svc:27017/?replicaSet=rs0",
        "prometheus.enabled": "false",
        "grafana.prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
        "serviceMonitor.enabled": "true",
        "prometheusRule.enabled": "true",
    }
    manifests = render(helm, sets=sets)
    settings = _settings(manifests, tmp_path)
    assert settings.database.redis.url == "rediss://redis.data.svc:6380/0"
    assert settings.database.mongodb.uri == sets["externalMongodb.uri"]
    workloads = sorted(w["metadata"]["name"] for w in manifests.workloads())
    assert workloads == sorted(["aep-grafana", FULLNAME])
    provisioning = manifests.get("ConfigMap", "aep-grafana")["data"]
    (datasource,) = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    assert datasource["url"] == sets["grafana.prometheusUrl"]
    manifests.get("ServiceMonitor", FULLNAME)
    manifests.get("PrometheusRule", FULLNAME)


def test_subcharts_are_local_and_switched_by_their_condition() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    dependencies = {d["name"]: d for d in chart["dependencies"]}
    assert set(dependencies) == set(SUBCHARTS)
    lock = yaml.safe_load((CHART / "Chart.lock").read_text())
    locked = {d["name"]: d["version"] for d in lock["dependencies"]}
    for name, dependency in dependencies.items():
        assert dependency["condition"] == f"{name}.enabled"
        assert not dependency.get("repository"), "a repository would need fetching"
        folder = CHART / "charts" / name
        subchart = yaml.safe_load((folder / "Chart.yaml").read_text())
        assert (subchart["name"], subchart["version"]) == (name, dependency["version"])
        assert locked[name] == dependency["version"]
        for own in ("values.yaml", "values.schema.json", "templates/_helpers.tpl"):
            assert (folder / own).is_file(), f"charts/{name}/{own}"
        defines = (folder / "templates" / "_helpers.tpl").read_text()
        assert f'define "{name}.fullname"' in defines
        assert "ad-event-processor." not in defines, f"{name} uses the parent's helpers"


def test_dependencies_build_offline(newest_helm: Helm, tmp_path: Path) -> None:
    copy = tmp_path / "ad-event-processor"
    shutil.copytree(CHART, copy)
    (copy / "Chart.lock").unlink()
    built = newest_helm.run("dependency", "build", str(copy))
    assert "did not declare a repository" in built.stdout
    listed = newest_helm.run("dependency", "list", str(copy)).stdout.splitlines()[1:]
    statuses = {line.split()[0]: line.split()[-1] for line in listed if line.strip()}
    assert statuses == dict.fromkeys(SUBCHARTS, "unpacked")
    assert sorted(p.name for p in (copy / "charts").iterdir()) == sorted(SUBCHARTS)


@pytest.mark.parametrize("name", SUBCHARTS)
def test_each_subchart_lints_and_renders_on_its_own(
    newest_helm: Helm, name: str, tmp_path: Path
) -> None:
    folder = CHART / "charts" / name
    linted = newest_helm.run("lint", "--strict", str(folder), check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    rendered = newest_helm.run("template", "aep", str(folder), "--kube-version", "1.37.0")
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert docs
    for doc in docs:
        validate_document(doc, "1.37.0")
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == name


@pytest.mark.parametrize("name", SUBCHARTS)
def test_a_disabled_subchart_renders_nothing(newest_helm: Helm, name: str) -> None:
    sets = {f"{name}.enabled": "false"}
    if name == "redis":
        sets.update({"externalRedis.url": "redis://elsewhere:6379/0"})
    if name == "mongodb":
        sets.update({"externalMongodb.uri": "mongodb://elsewhere:27017"})
    if name == "prometheus":
        sets.update({"grafana.enabled": "false"})
    manifests = render(newest_helm, sets=sets)
    for doc in manifests:
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") != name, doc


@pytest.mark.parametrize(
    ("sets", "chart", "message"),
    [
        ({"redis.persistence.size": "lots"}, "redis", "size"),
        ({"redis.persistance.size": "8Gi"}, "redis", "persistance"),
        (
            {
                "database.type": "mongodb",
                "redis.enabled": "false",
                "mongodb.enabled": "true",
                "mongodb.image.pullPolicy": "Sometimes",
            },
            "mongodb",
            "pullPolicy",
        ),
        ({"prometheus.retention": "7days"}, "prometheus", "retention"),
        ({"prometheus.scrapeConfigs[0].scrape_interval": "5s"}, "prometheus", "job_name"),
        ({"grafana.admin.password": "admin"}, "grafana", "password"),
        ({"grafana.homeDashboard": "../etc/passwd"}, "grafana", "homeDashboard"),
    ],
)
def test_each_subchart_schema_checks_its_values(
    helm: Helm, sets: dict[str, str], chart: str, message: str
) -> None:
    error = render_error(helm, sets=sets)
    assert "schema" in error
    assert f"{chart}:" in error
    assert message in error


def test_the_former_keys_of_the_bundled_parts_keep_working(helm: Helm, tmp_path: Path) -> None:
    """Keys of the single chart before the subcharts, with their effect."""
    values = {
        "database": {"type": "mongodb"},
        "redis": {"enabled": False},
        "mongodb": {
            "enabled": True,
            "image": {"repository": "mirror/mongo", "tag": "7.0.17", "pullPolicy": "Always"},
            "database": "campaigns",
            "persistence": {"enabled": True, "storageClass": "fast", "size": "30Gi"},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "nodeSelector": {"disk": "ssd"},
        },
        "prometheus": {
            "enabled": True,
            "image": {"repository": "mirror/prometheus", "tag": "v3.5.1", "pullPolicy": "Always"},
            "scrapeInterval": "30s",
            "evaluationInterval": "1m",
            "retention": "30d",
            "persistence": {"enabled": True, "size": "50Gi"},
        },
        "grafana": {
            "enabled": True,
            "admin": {"user": "ops", "existingSecret": "grafana-admin"},
            "tolerations": [{"key": "monitoring", "operator": "Exists"}],
        },
    }
    path = tmp_path / "former.yaml"
    path.write_text(yaml.safe_dump(values))
    manifests = render(helm, (path,))
    settings = _settings(manifests, tmp_path)
    assert settings.database.mongodb.database == "campaigns"
    mongodb = manifests.get("StatefulSet", "aep-mongodb")
    mongo = container(mongodb["spec"]["template"]["spec"], "mongodb")
    assert (mongo["image"], mongo["imagePullPolicy"]) == ("mirror/mongo:7.0.17", "Always")
    assert mongo["resources"]["limits"]["memory"] == "4Gi"
    assert mongodb["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}
    (claim,) = mongodb["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "30Gi"
    prometheus = manifests.get("Deployment", "aep-prometheus")
    args = container(prometheus["spec"]["template"]["spec"], "prometheus")["args"]
    assert "--storage.tsdb.retention.time=30d" in args
    config = yaml.safe_load(manifests.get("ConfigMap", "aep-prometheus")["data"]["prometheus.yml"])
    assert config["global"] == {"scrape_interval": "30s", "evaluation_interval": "1m"}
    claim = manifests.get("PersistentVolumeClaim", "aep-prometheus")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    grafana = manifests.get("Deployment", "aep-grafana")["spec"]["template"]["spec"]
    assert grafana["tolerations"] == values["grafana"]["tolerations"]  # type: ignore[index]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container(grafana, "grafana")["env"]
        if "valueFrom" in e
    }
    assert refs == {"grafana-admin"}
    assert manifests.of_kind("Secret") == []
