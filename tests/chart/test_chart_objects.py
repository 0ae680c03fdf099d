"""Assertions on the objects the chart renders: probes, selectors, HPA, config, security."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from aep.settings import AckMode, Settings, StoreType, load_settings
from tests.helpers.chart_render import (
    CHART,
    KIND_VALUES,
    NAMESPACE,
    SCENARIOS,
    Helm,
    Manifests,
    container,
    render,
    render_error,
    selects,
)

FULLNAME = "aep-ad-event-processor"
# Set by the chart on every server pod (the config file has the same values).
CHART_ENV = ("AEP_DATABASE_TYPE", "AEP_SPILL_DIR", "AEP_SPILL_MAX_BYTES")
SCENARIO_IDS = [path.name.removesuffix("-values.yaml") for path in SCENARIOS]
ALL_VALUES = [(), *((path,) for path in SCENARIOS), (KIND_VALUES,)]
ALL_IDS = ["defaults", *SCENARIO_IDS, "kind"]


def scenario(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


def loaded_config(manifests: Manifests, tmp_path: Path) -> Settings:
    """The rendered config.yaml, read by the service's own settings loader."""
    path = tmp_path / "config.yaml"
    path.write_text(manifests.config_text())
    return load_settings(path, environ=manifests.server_environ())


@pytest.mark.parametrize("values_files", ALL_VALUES, ids=ALL_IDS)
def test_server_probes_ask_the_serving_state(
    helm: Helm, values_files: tuple[Path, ...], tmp_path: Path
) -> None:
    """Native grpc probes on the gRPC port; with TLS (which they cannot speak),
    GET /health on the plain-HTTP metrics port, the same serving state."""
    manifests = render(helm, values_files)
    pod = manifests.server["spec"]["template"]["spec"]
    server = container(pod, "server")
    settings = loaded_config(manifests, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"grpc": settings.server.port, "metrics": settings.metrics.port}
    tls = settings.tls.cert_file is not None
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        handler = set(server[probe]) - {"periodSeconds", "failureThreshold", "timeoutSeconds"}
        if tls:
            assert handler == {"httpGet"}, f"{probe} must not be a grpc probe with TLS"
            assert server[probe]["httpGet"]["path"] == "/health"
            assert ports[server[probe]["httpGet"]["port"]] == settings.metrics.port
        else:
            assert handler == {"grpc"}, f"{probe} must be a native grpc probe"
            assert server[probe]["grpc"]["port"] == settings.server.port
            assert isinstance(server[probe]["grpc"]["port"], int)
    assert settings.server.host == "0.0.0.0"
    assert settings.metrics.host == "0.0.0.0"  # the kubelet reaches /health from outside


@pytest.mark.parametrize("values_files", ALL_VALUES, ids=ALL_IDS)
def test_server_pod_runs_the_mounted_config(
    helm: Helm, values_files: tuple[Path, ...], tmp_path: Path
) -> None:
    manifests = render(helm, values_files)
    pod = manifests.server["spec"]["template"]["spec"]
    server = container(pod, "server")
    assert server["args"][0] == "--config"
    config_path = Path(server["args"][1])
    mount = next(m for m in server["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = manifests.get("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in configmap["data"]
    assert pod["enableServiceLinks"] is False
    env_names = {entry["name"] for entry in server.get("env") or []}
    assert not {name for name in env_names if name.startswith("AEP_")} - {
        "AEP_DATABASE_REDIS_URL",
        "AEP_DATABASE_MONGODB_URI",
        "AEP_DATABASE_KAFKA_SASL_PASSWORD",
        "AEP_DATABASE_REDIS_CLUSTER",
        *CHART_ENV,
    }
    # The values the chart sets as env vars are the config file's too.
    config = yaml.safe_load(configmap["data"][config_path.name])
    environ = manifests.server_environ()
    assert environ["AEP_DATABASE_TYPE"] == config["database"]["type"]
    assert environ["AEP_SPILL_DIR"] == config["spill"]["dir"]
    assert environ["AEP_SPILL_MAX_BYTES"] == str(config["spill"]["max_bytes"])


def test_config_checksum_rolls_the_pods_on_a_config_change(helm: Helm) -> None:
    def checksum(sets: dict[str, str]) -> str:
        template = render(helm, sets=sets).server["spec"]["template"]
        return str(template["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert base == checksum({})
    assert checksum({"config.batch.size": "1000"}) != base
    assert checksum({"shutdownGracePeriodSeconds": "20"}) != base
    assert checksum({"podLabels.team": "ads"}) == base


@pytest.mark.parametrize("values_files", ALL_VALUES, ids=ALL_IDS)
def test_termination_grace_outlasts_the_drain(
    helm: Helm, values_files: tuple[Path, ...], tmp_path: Path
) -> None:
    manifests = render(helm, values_files)
    pod = manifests.server["spec"]["template"]["spec"]
    settings = loaded_config(manifests, tmp_path)
    pre_stop = container(pod, "server")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert (
        pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + settings.shutdown.grace_period
    )


@pytest.mark.parametrize("values_files", ALL_VALUES, ids=ALL_IDS)
def test_selectors_match_their_pods_and_only_them(
    helm: Helm, values_files: tuple[Path, ...]
) -> None:
    manifests = render(helm, values_files)
    pods = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for doc in manifests.workloads()
    }
    server_labels = pods[manifests.server["metadata"]["name"]]
    for workload in manifests.workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        name = workload["metadata"]["name"]
        assert [other for other, labels in pods.items() if selects(selector, labels)] == [name]

    for service in manifests.of_kind("Service"):
        selected = [
            workload
            for workload in manifests.workloads()
            if selects(
                service["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)}"
        port_names = {
            port["name"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for port in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
            assert port.get("appProtocol")

    for pdb in manifests.of_kind("PodDisruptionBudget"):
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == manifests.server["spec"]["selector"]["matchLabels"]
        )
    for policy in manifests.of_kind("NetworkPolicy"):
        targets = [
            n
            for n, labels in pods.items()
            if selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        ]
        assert len(targets) == 1
    spread = manifests.server["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], server_labels)


def test_the_server_service_exposes_grpc_and_metrics(helm: Helm) -> None:
    service = render(helm).get("Service", FULLNAME)
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics"}
    assert ports["grpc"]["port"] == 8080
    assert ports["metrics"]["port"] == 9464
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


@pytest.mark.parametrize("name", ["hpa-custom-metric", "full-stack"])
def test_hpa_targets_the_deployment(helm: Helm, name: str) -> None:
    manifests = render(helm, scenario(name))
    hpa = manifests.get("HorizontalPodAutoscaler", FULLNAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = manifests.server
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    # The HPA owns the replica count; a rendered one would fight it on every upgrade.
    assert "replicas" not in deployment["spec"]
    metrics = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert container(deployment["spec"]["template"]["spec"], "server")["resources"]["requests"][
        "cpu"
    ]


def test_hpa_custom_metric_and_behavior(helm: Helm) -> None:
    values = yaml.safe_load(scenario("hpa-custom-metric")[0].read_text())
    hpa = render(helm, scenario("hpa-custom-metric")).get("HorizontalPodAutoscaler", FULLNAME)
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]
    assert pods_metric["metric"]["name"] == "aep_events_received_per_second"
    assert pods_metric["target"] == {"type": "AverageValue", "averageValue": "5000"}
    assert hpa["spec"]["behavior"] == values["autoscaling"]["behavior"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)


def test_without_autoscaling_there_is_no_hpa_and_replicas_are_set(helm: Helm) -> None:
    manifests = render(helm, sets={"replicaCount": "3", "autoscaling.enabled": "false"})
    assert manifests.of_kind("HorizontalPodAutoscaler") == []
    assert manifests.server["spec"]["replicas"] == 3


@pytest.mark.parametrize("values_files", ALL_VALUES, ids=ALL_IDS)
def test_every_pod_is_locked_down(helm: Helm, values_files: tuple[Path, ...]) -> None:
    for name, pod in render(helm, values_files).pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("enableServiceLinks") is False, name
        for c in pod["containers"]:
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c["resources"]["requests"], (name, c["name"])
            assert c["resources"]["limits"]["memory"], (name, c["name"])


def test_server_writes_only_to_volumes(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, scenario("file"))
    pod = manifests.server["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(pod, "server")["volumeMounts"]}
    settings = loaded_config(manifests, tmp_path)
    for directory in (settings.database.file.dir, settings.dead_letter.dir, settings.spill.dir):
        assert any(
            Path(directory).is_relative_to(path) and not mount.get("readOnly")
            for path, mount in mounts.items()
        ), directory
    assert "/tmp" in mounts


@pytest.mark.parametrize(
    ("name", "store"),
    [("file", StoreType.FILE), ("redis", StoreType.REDIS), ("mongodb", StoreType.MONGODB)],
)
def test_database_type_wires_the_bundled_store(
    helm: Helm, name: str, store: StoreType, tmp_path: Path
) -> None:
    manifests = render(helm, scenario(name))
    settings = loaded_config(manifests, tmp_path)
    assert settings.database.type == (store,)
    if store is StoreType.FILE:
        assert manifests.of_kind("StatefulSet") == []
        return
    url = urlparse(
        settings.database.redis.url if store is StoreType.REDIS else settings.database.mongodb.uri
    )
    service = manifests.get("Service", url.hostname)
    assert url.port in [port["port"] for port in service["spec"]["ports"]]
    statefulset = manifests.get("StatefulSet", f"aep-{name}")
    assert selects(
        service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"]
    )
    headless = manifests.get("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    image = container(statefulset["spec"]["template"]["spec"], name)["image"]
    assert image.split(":")[0] == {"redis": "redis", "mongodb": "mongo"}[name]
    if store is StoreType.MONGODB:
        assert settings.database.mongodb.database == "ads"
        claim = statefulset["spec"]["volumeClaimTemplates"][0]
        assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    else:
        assert settings.database.redis.stream == "ad_events"


def test_external_stores(helm: Helm, tmp_path: Path) -> None:
    redis = render(helm, scenario("external-redis"))
    settings = loaded_config(redis, tmp_path)
    assert settings.database.redis.url == "redis://redis.data.svc.cluster.local:6379/0"
    assert redis.workloads() == [redis.server]

    mongodb = render(helm, scenario("external"))
    settings = loaded_config(mongodb, tmp_path)
    assert settings.database.type == (StoreType.MONGODB,)
    assert settings.database.mongodb.database == "ad_events"
    env = {
        e["name"]: e for e in container(mongodb.server["spec"]["template"]["spec"], "server")["env"]
    }
    assert env["AEP_DATABASE_MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "ad-events-mongodb",
        "key": "uri",
    }
    names = sorted(w["metadata"]["name"] for w in mongodb.workloads())
    assert names == sorted(["aep-grafana", FULLNAME])


def test_pdb(helm: Helm) -> None:
    assert render(helm).get("PodDisruptionBudget", FULLNAME)["spec"]["maxUnavailable"] == 1
    spec = render(helm, scenario("external-redis")).get("PodDisruptionBudget", FULLNAME)["spec"]
    assert spec["minAvailable"] == 1
    assert "maxUnavailable" not in spec


def test_service_account_has_no_token(helm: Helm) -> None:
    manifests = render(helm)
    account = manifests.get("ServiceAccount", FULLNAME)
    pod = manifests.server["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False


def test_network_policies(helm: Helm) -> None:
    manifests = render(helm, scenario("full-stack"))
    server_policy = manifests.get("NetworkPolicy", FULLNAME)
    grpc_rule, metrics_rule = server_policy["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert "from" not in grpc_rule  # grpcFrom empty: any client
    prometheus_pod = manifests.workload("prometheus")["spec"]["template"]["metadata"]["labels"]
    assert any(
        "podSelector" in peer and selects(peer["podSelector"]["matchLabels"], prometheus_pod)
        for peer in metrics_rule["from"]
    )
    redis_policy = manifests.get("NetworkPolicy", "aep-redis")
    (rule,) = redis_policy["spec"]["ingress"]
    server_pod = manifests.server["spec"]["template"]["metadata"]["labels"]
    assert selects(rule["from"][0]["podSelector"]["matchLabels"], server_pod)
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    redis_pod = manifests.workload("redis")["spec"]["template"]["metadata"]["labels"]
    assert selects(redis_policy["spec"]["podSelector"]["matchLabels"], redis_pod)
    mongodb_policy = manifests.get("NetworkPolicy", "aep-mongodb")
    (rule,) = mongodb_policy["spec"]["ingress"]
    assert selects(rule["from"][0]["podSelector"]["matchLabels"], server_pod)
    assert rule["ports"] == [{"port": "mongodb", "protocol": "TCP"}]
    mongodb_pod = manifests.workload("mongodb")["spec"]["template"]["metadata"]["labels"]
    assert selects(mongodb_policy["spec"]["podSelector"]["matchLabels"], mongodb_pod)
    assert manifests.find("NetworkPolicy", "aep-mongodb") is not None
    single = render(helm, scenario("redis"))
    assert single.find("NetworkPolicy", "aep-redis") is not None
    assert single.find("NetworkPolicy", "aep-mongodb") is None


def test_prometheus_discovers_the_server_pods_with_least_privilege(helm: Helm) -> None:
    manifests = render(helm, scenario("full-stack"))
    config = yaml.safe_load(manifests.get("ConfigMap", "aep-prometheus")["data"]["prometheus.yml"])
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ad-event-processor")
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == [NAMESPACE]
    selector = dict(pair.split("=") for pair in sd["selectors"][0]["label"].split(","))
    # The server's pods and no other pod of the release (the helm test pod, the subcharts').
    selected = [name for name, labels in manifests.pod_labels() if selects(selector, labels)]
    assert selected == [FULLNAME]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    server_ports = [
        p["name"]
        for p in container(manifests.server["spec"]["template"]["spec"], "server")["ports"]
    ]
    assert keep["regex"] in server_ports
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets  # prometheus-adapter maps series to pods by these

    deployment = manifests.workload("prometheus")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    binding = manifests.get("RoleBinding", "aep-prometheus")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    role = manifests.get("Role", binding["roleRef"]["name"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    assert manifests.of_kind("ClusterRole") == []
    rules = manifests.get("ConfigMap", "aep-prometheus-rules")["data"]
    assert rules == {"alerts.yaml": (CHART / "files" / "alerts.yaml").read_text()}
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in container(pod, "prometheus")["volumeMounts"] if m["name"] == "rules")
    assert config["rule_files"] == [f"{mount['mountPath']}/*.yaml"]
    volume = next(v for v in pod["volumes"] if v["name"] == "rules")
    assert volume["configMap"]["name"] == "aep-prometheus-rules"


def test_grafana_gets_a_generated_password_datasource_and_dashboards(helm: Helm) -> None:
    manifests = render(helm, scenario("full-stack"))
    secret = manifests.get("Secret", "aep-grafana")
    password = base64.b64decode(secret["data"]["admin-password"]).decode()
    assert password != "admin"
    assert len(password) >= 24
    again = render(helm, scenario("full-stack"), sets={"podLabels.x": "y"})
    assert (
        again.get("Secret", "aep-grafana")["data"]["admin-password"]
        != secret["data"]["admin-password"]
    )

    grafana = container(manifests.workload("grafana")["spec"]["template"]["spec"], "grafana")
    env = {e["name"]: e for e in grafana["env"]}
    for variable, key in (
        ("GF_SECURITY_ADMIN_USER", "admin-user"),
        ("GF_SECURITY_ADMIN_PASSWORD", "admin-password"),
    ):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {
            "name": "aep-grafana",
            "key": key,
        }

    provisioning = manifests.get("ConfigMap", "aep-grafana")["data"]
    (datasource,) = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    url = urlparse(datasource["url"])
    prometheus = manifests.get("Service", url.hostname)
    assert url.port == prometheus["spec"]["ports"][0]["port"]
    dashboards = manifests.get("ConfigMap", "aep-grafana-dashboards")["data"]
    source = sorted(Path(CHART.parents[1], "dashboards").glob("*.json"))
    assert sorted(dashboards) == [path.name for path in source]
    for path in source:
        assert dashboards[path.name] == path.read_text()


def test_grafana_with_an_existing_secret_and_external_prometheus(helm: Helm) -> None:
    manifests = render(helm, scenario("external"))
    assert manifests.of_kind("Secret") == []
    grafana = container(manifests.workload("grafana")["spec"]["template"]["spec"], "grafana")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in grafana["env"] if "valueFrom" in e}
    assert refs == {"grafana-admin"}
    provisioning = manifests.get("ConfigMap", "aep-grafana")["data"]
    (datasource,) = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    assert datasource["url"] == "http://prometheus-operated.monitoring.svc:9090"


def test_service_monitor_and_prometheus_rule(helm: Helm) -> None:
    manifests = render(helm, scenario("servicemonitor"))
    monitor = manifests.get("ServiceMonitor", FULLNAME)
    service = manifests.get("Service", FULLNAME)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = manifests.get("PrometheusRule", FULLNAME)
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert render(helm).of_kind("ServiceMonitor") == []


def test_helm_test_pod_checks_grpc_health_through_the_service(helm: Helm) -> None:
    manifests = render(helm)
    (pod,) = manifests.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (test,) = pod["spec"]["containers"]
    assert (
        test["image"] == container(manifests.server["spec"]["template"]["spec"], "server")["image"]
    )
    command = test["command"]
    assert command[:3] == ["ad-event-client", "--mode", "health"]
    host, port = command[command.index("--server") + 1].split(":")
    service = manifests.get("Service", host)
    assert int(port) == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")


def test_image_reference(helm: Helm) -> None:
    def image(sets: dict[str, str]) -> str:
        pod = render(helm, sets=sets).server["spec"]["template"]["spec"]
        return str(container(pod, "server")["image"])

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert image({}) == f"ad-event-processor:{chart['appVersion']}"
    assert (
        image({"image.repository": "registry.example/aep", "image.tag": "1.2.3"})
        == "registry.example/aep:1.2.3"
    )
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert image({"image.digest": digest}) == f"ad-event-processor@{digest}"


def test_long_release_names_stay_within_kubernetes_limits(helm: Helm) -> None:
    release = ("long-release-name-" * 3)[:53]  # Helm's own limit for a release name
    result = helm.run(
        "template",
        release,
        str(CHART),
        "--values",
        str(scenario("full-stack")[0]),
        "--values",
        str(scenario("mongodb")[0]),
    )
    names: dict[str, list[str]] = {}
    for doc in yaml.safe_load_all(result.stdout):
        if doc:
            name = doc["metadata"]["name"]
            assert len(name) <= 63, name
            names.setdefault(doc["kind"], []).append(name)
    for kind, kind_names in names.items():
        assert len(kind_names) == len(set(kind_names)), f"two {kind} objects share a name"


def _mounts(pod: dict[str, object]) -> dict[str, dict[str, object]]:
    server = container(pod, "server")
    return {str(m["mountPath"]): m for m in server["volumeMounts"]}


def test_wal_on_an_empty_dir_is_mounted_where_the_config_points(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, sets={"wal.enabled": "true", "config.ack.mode": "durable"})
    settings = loaded_config(manifests, tmp_path)
    assert settings.ack.mode is AckMode.DURABLE
    assert settings.wal.dir is not None
    pod = manifests.server["spec"]["template"]["spec"]
    mount = _mounts(pod)[str(settings.wal.dir)]
    assert not mount.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"sizeLimit": "1Gi"}
    # Not on the data claim, and no claim of its own.
    assert mount["name"] != "data"
    claims = manifests.server["spec"].get("volumeClaimTemplates", [])
    assert [claim["metadata"]["name"] for claim in claims] == ["data"]


def test_without_wal_there_is_no_wal_dir_or_volume(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm)
    assert loaded_config(manifests, tmp_path).wal.dir is None
    pod = manifests.server["spec"]["template"]["spec"]
    assert "wal" not in {v["name"] for v in pod["volumes"]}


def test_wal_on_claims_runs_a_stateful_set_with_a_claim_per_pod(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, scenario("wal"))
    server = manifests.server
    assert server["kind"] == "StatefulSet"
    assert FULLNAME not in {d["metadata"]["name"] for d in manifests.of_kind("Deployment")}
    settings = loaded_config(manifests, tmp_path)
    assert settings.ack.mode is AckMode.DURABLE
    assert settings.wal.segment_bytes == 16 * 1024**2
    pod = server["spec"]["template"]["spec"]
    mount = _mounts(pod)[str(settings.wal.dir)]
    # The mount comes from the claim template, not from a pod volume.
    assert mount["name"] not in {v["name"] for v in pod["volumes"]}
    claims = {claim["metadata"]["name"]: claim for claim in server["spec"]["volumeClaimTemplates"]}
    # Dead letters (data) and the log (wal): each pod has its own claim of each.
    assert set(claims) == {"data", mount["name"]}
    assert _mounts(pod)["/app/data"]["name"] == "data"
    claim = claims[mount["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    headless = manifests.get("Service", server["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels(server))
    hpa = manifests.get("HorizontalPodAutoscaler", FULLNAME)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "StatefulSet",
        server["metadata"]["name"],
    )
    assert "replicas" not in server["spec"]
    pdb = manifests.get("PodDisruptionBudget", FULLNAME)
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(server))


def pod_labels(workload: dict[str, object]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])  # type: ignore[index]


@pytest.mark.parametrize(
    "sets",
    [
        {"config.ack.mode": "durable"},
        {"env[0].name": "AEP_ACK_MODE", "env[0].value": "durable"},
        {"config.ack.mode": "durable", "wal.persistence.type": "pvc"},
    ],
)
def test_durable_acks_without_the_wal_fail_rendering(helm: Helm, sets: dict[str, str]) -> None:
    assert "ack.mode durable needs the write-ahead log: set wal.enabled=true" in render_error(
        helm, sets=sets
    )


def test_the_chart_owns_wal_dir(helm: Helm) -> None:
    error = render_error(helm, sets={"config.wal.dir": "/elsewhere"})
    assert "config.wal.dir is set by the chart; set wal.enabled instead" in error


SECRET_VALUES = {
    "tls.enabled": "true",
    "tls.secretName": "server-tls",
    "tls.clientAuth": "true",
    "auth.enabled": "true",
    "auth.secretName": "keys",
    "auth.secretKey": "keys.yaml",
    "tests.apiKeySecretName": "test-key",
    "tests.clientCertSecretName": "test-client-tls",
}


def _secret_volume(pod: dict[str, Any], mount_path: str, container_name: str) -> dict[str, Any]:
    mount = next(
        m for m in container(pod, container_name)["volumeMounts"] if m["mountPath"] == mount_path
    )
    assert mount["readOnly"] is True, mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["defaultMode"] == 0o440
    return dict(volume["secret"])


@pytest.mark.parametrize("values", [scenario("secure"), ()], ids=["secure", "sets"])
def test_tls_and_api_keys_come_from_secrets_mounted_read_only(
    helm: Helm, values: tuple[Path, ...], tmp_path: Path
) -> None:
    manifests = render(helm, values, sets=None if values else SECRET_VALUES)
    settings = loaded_config(manifests, tmp_path)
    pod = manifests.server["spec"]["template"]["spec"]
    assert settings.tls.cert_file is not None and settings.tls.key_file is not None
    assert settings.tls.client_ca_file is not None
    assert settings.auth.api_keys_file is not None
    tls_dir = settings.tls.cert_file.parent
    assert {settings.tls.key_file.parent, settings.tls.client_ca_file.parent} == {tls_dir}
    tls = _secret_volume(pod, str(tls_dir), "server")
    expected_tls = "aep-server-tls" if values else "server-tls"
    assert tls["secretName"] == expected_tls
    assert {item["path"]: item["key"] for item in tls["items"]} == {
        settings.tls.cert_file.name: "tls.crt",
        settings.tls.key_file.name: "tls.key",
        settings.tls.client_ca_file.name: "ca.crt",
    }
    keys = _secret_volume(pod, str(settings.auth.api_keys_file.parent), "server")
    assert keys["secretName"] == ("aep-api-keys" if values else "keys")
    assert keys["items"] == [
        {
            "key": "api-keys.yaml" if values else "keys.yaml",
            "path": settings.auth.api_keys_file.name,
        }
    ]
    if values:
        assert settings.auth.default_rate_limit_rps == 200

    # The ConfigMap carries paths, never Secret names' content or anything secret-like.
    configmaps = yaml.safe_dump([cm["data"] for cm in manifests.of_kind("ConfigMap")])
    for marker in ("BEGIN CERTIFICATE", "PRIVATE KEY", "x-api-key", "key: "):
        assert marker not in configmaps
    # The chart makes none of them: they are the user's (Grafana's admin Secret is its own).
    referenced = {
        volume["secret"]["secretName"]
        for _, pod in manifests.pod_specs()
        for volume in pod.get("volumes", [])
        if "secret" in volume
    }
    assert referenced
    assert not referenced & {secret["metadata"]["name"] for secret in manifests.of_kind("Secret")}


def test_tls_without_client_auth_sets_no_client_ca(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, sets={"tls.enabled": "true", "tls.secretName": "server-tls"})
    settings = loaded_config(manifests, tmp_path)
    assert settings.tls.client_ca_file is None
    assert settings.auth.api_keys_file is None
    (test_pod,) = manifests.of_kind("Pod")
    command = test_pod["spec"]["containers"][0]["command"]
    assert "--tls-ca" in command
    assert "--tls-cert" not in command
    assert "env" not in test_pod["spec"]["containers"][0]


def test_helm_test_pod_passes_tls_and_api_key_to_the_client(helm: Helm) -> None:
    from aep.tools.client import parser

    manifests = render(helm, scenario("secure"))
    (pod,) = manifests.of_kind("Pod")
    (test,) = pod["spec"]["containers"]
    args = parser().parse_args(test["command"][1:])
    assert args.mode == "health"
    ca = _secret_volume(pod["spec"], str(args.tls_ca.parent), "health")
    # Only the CA of the server's Secret, never the server's private key.
    assert ca == {
        "secretName": "aep-server-tls",
        "defaultMode": 0o440,
        "items": [{"key": "ca.crt", "path": args.tls_ca.name}],
    }
    client = _secret_volume(pod["spec"], str(args.tls_cert.parent), "health")
    assert client["secretName"] == "aep-test-client-tls"
    assert {item["path"] for item in client["items"]} == {args.tls_cert.name, args.tls_key.name}
    assert args.api_key is None  # not on the command line
    env = {e["name"]: e for e in test["env"]}
    assert env["AEP_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "aep-test-api-key",
        "key": "api-key",
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"tls.enabled": "true"}, "tls.enabled needs tls.secretName"),
        ({"tls.clientAuth": "true"}, "tls.clientAuth (mTLS) needs tls.enabled=true"),
        ({"auth.enabled": "true"}, "auth.enabled needs auth.secretName"),
        (
            {"auth.enabled": "true", "auth.secretName": "keys"},
            "the helm test pod needs an API key with the read role",
        ),
        (
            {"tls.enabled": "true", "tls.secretName": "t", "tls.clientAuth": "true"},
            "the helm test pod needs a client certificate",
        ),
        ({"config.tls.cert_file": "/x"}, "config.tls.cert_file is set by the chart"),
        ({"config.auth.api_keys_file": "/x"}, "config.auth.api_keys_file is set by the chart"),
    ],
)
def test_inconsistent_security_values_fail_with_a_message(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    assert message in render_error(helm, sets=sets)


def test_security_checks_can_be_met_without_the_helm_test(helm: Helm) -> None:
    sets = {k: v for k, v in SECRET_VALUES.items() if not k.startswith("tests.")}
    manifests = render(helm, sets={**sets, "tests.enabled": "false"})
    assert manifests.of_kind("Pod") == []


def test_network_policy_limits_grpc_and_metrics_sources(helm: Helm) -> None:
    values = yaml.safe_load(scenario("secure")[0].read_text())["networkPolicy"]
    manifests = render(helm, scenario("secure"))
    grpc_rule, metrics_rule = manifests.get("NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"][: len(values["grpcFrom"])] == values["grpcFrom"]
    # ...plus the helm test pod, so `helm test` still reaches the server.
    (test_pod,) = manifests.of_kind("Pod")
    assert selects(
        grpc_rule["from"][-1]["podSelector"]["matchLabels"], test_pod["metadata"]["labels"]
    )
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    # namespaceSelector and podSelector in one peer: Prometheus pods of that namespace
    # only; then the bundled Prometheus.
    assert metrics_rule["from"][: len(values["metricsFrom"])] == values["metricsFrom"]
    prometheus_pod = manifests.workload("prometheus")["spec"]["template"]["metadata"]["labels"]
    (bundled,) = metrics_rule["from"][len(values["metricsFrom"]) :]
    assert selects(bundled["podSelector"]["matchLabels"], prometheus_pod)
