"""skaffold.yaml, the kind cluster files and the Dockerfile, checked without the tools.

skaffold, kind and a Kubernetes API server are not available where these tests
run; these checks hold the files to the keys and names the tools rely on, and
cross-check them against the chart as Helm renders it.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.helpers.chart_render import CHART, REPO, require_helm


def _load(path: str) -> Any:
    return yaml.safe_load((REPO / path).read_text())


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = _load("skaffold.yaml")
    return config


def test_skaffold_schema_and_artifact(skaffold: dict[str, Any]) -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", skaffold["apiVersion"])
    assert int(skaffold["apiVersion"].removeprefix("skaffold/v4beta")) >= 11
    assert skaffold["kind"] == "Config"
    (artifact,) = skaffold["build"]["artifacts"]
    assert (REPO / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()
    assert skaffold["build"]["local"]["push"] is False


def _release(skaffold: dict[str, Any]) -> dict[str, Any]:
    (release,) = skaffold["deploy"]["helm"]["releases"]
    return dict(release)


def test_skaffold_wires_the_built_image_into_the_chart(skaffold: dict[str, Any]) -> None:
    (artifact,) = skaffold["build"]["artifacts"]
    # Skaffold's template names use the artifact's image with / and - as _.
    key = re.sub(r"[/-]", "_", artifact["image"])
    release = _release(skaffold)
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
    assert templates["image.tag"] == f"{{{{.IMAGE_TAG_{key}}}}}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for dotted in [*templates, *release.get("setValues", {})]:
        node = values
        for part in dotted.split("."):
            assert part in node, f"{dotted} is not a chart value"
            node = node[part]


def _profile(skaffold: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(p for p in skaffold["profiles"] if p["name"] == name))


def test_skaffold_kind_profile(skaffold: dict[str, Any]) -> None:
    kind = _profile(skaffold, "kind")
    assert {"kubeContext": "kind-aep"} in kind["activation"]
    cluster = _load("k8s/kind-config.yaml")
    assert f"kind-{cluster['name']}" == "kind-aep"
    patches = {patch["path"]: patch for patch in kind["patches"]}
    assert patches["/deploy/kubeContext"]["value"] == "kind-aep"
    for path in patches["/deploy/helm/releases/0/valuesFiles"]["value"]:
        assert (REPO / path).is_file()


def _rendered_services(skaffold: dict[str, Any], profile: str | None) -> dict[str, set[int]]:
    """Services of the chart rendered with skaffold's release name, values and set values."""
    release = _release(skaffold)
    args = ["template", release["name"], str(REPO / release["chartPath"])]
    args += ["--namespace", release["namespace"]]
    if profile:
        patches = _profile(skaffold, profile)["patches"]
        for patch in patches:
            if patch["path"].endswith("/valuesFiles"):
                for path in patch["value"]:
                    args += ["--values", str(REPO / path)]
    for key, value in release.get("setValues", {}).items():
        args += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    for key in release["setValueTemplates"]:
        args += ["--set", f"{key}=skaffold-would-fill-this"]
    output = require_helm()[-1].run(*args).stdout
    services: dict[str, set[int]] = {}
    for doc in yaml.safe_load_all(output):
        if doc and doc["kind"] == "Service":
            services[doc["metadata"]["name"]] = {port["port"] for port in doc["spec"]["ports"]}
    return services


@pytest.mark.parametrize("profile", [None, "kind"])
def test_skaffold_port_forwards_reach_rendered_services(
    skaffold: dict[str, Any], profile: str | None
) -> None:
    services = _rendered_services(skaffold, profile)
    forwards = {(f["resourceName"], f["port"]) for f in skaffold["portForward"]}
    for forward in skaffold["portForward"]:
        assert forward["resourceType"] == "service"
        assert forward["namespace"] == _release(skaffold)["namespace"]
        assert forward["port"] in services[forward["resourceName"]], forward
    ports = {port for _, port in forwards}
    assert {8080, 9464, 9090, 3000} <= ports  # gRPC, metrics, Prometheus, Grafana


def test_kind_cluster_config() -> None:
    cluster = _load("k8s/kind-config.yaml")
    assert cluster["kind"] == "Cluster"
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in cluster["nodes"]]
    assert roles.count("control-plane") == 1
    assert roles.count("worker") >= 2
    zones = {node.get("labels", {}).get("topology.kubernetes.io/zone") for node in cluster["nodes"]}
    assert len(zones - {None}) >= 2  # the chart spreads replicas over zones


def test_metrics_server_kustomization_for_kind() -> None:
    kustomization = _load("k8s/metrics-server/kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    (resource,) = kustomization["resources"]
    assert re.search(r"metrics-server/releases/download/v\d+\.\d+\.\d+/components\.yaml$", resource)
    (patch,) = kustomization["patches"]
    assert patch["target"]["name"] == "metrics-server"
    assert yaml.safe_load(patch["patch"]) == [
        {
            "op": "add",
            "path": "/spec/template/spec/containers/0/args/-",
            "value": "--kubelet-insecure-tls",
        }
    ]


def test_adapter_serves_the_metric_the_hpa_asks_for() -> None:
    adapter = _load("k8s/prometheus-adapter-values.yaml")
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["autoscaling"]["customMetric"]["name"] in served
    scenario = yaml.safe_load((CHART / "ci" / "hpa-custom-metric-values.yaml").read_text())
    assert scenario["autoscaling"]["customMetric"]["name"] in served
    for rule in adapter["rules"]["custom"]:
        resources = rule["resources"]["overrides"]
        assert resources == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.split(maxsplit=1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    stages = [args for op, args in instructions if op == "FROM"]
    assert stages == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS runtime"]
    runtime = instructions[[op for op, _ in instructions].index("FROM", 2) :]
    build = instructions[: len(instructions) - len(runtime)]
    copies = [args for op, args in build if op == "COPY"]
    install_deps = next(i for i, (op, args) in enumerate(build) if "--requirement" in args)
    copy_source = next(i for i, (op, args) in enumerate(build) if args.startswith("service/"))
    assert install_deps < copy_source, "dependencies must be installed before the source is copied"
    assert any(args.startswith("pyproject.toml") for args in copies)
    (user,) = [args for op, args in runtime if op == "USER"]
    assert user == "${APP_UID}:${APP_UID}"
    assert ("ARG", "APP_UID=10001") in runtime
    (entrypoint,) = [args for op, args in runtime if op == "ENTRYPOINT"]
    assert entrypoint == '["ad-event-processor"]'
    (expose,) = [args for op, args in runtime if op == "EXPOSE"]
    assert expose.split() == ["8080", "9464"]
    assert [args for op, args in runtime if op == "COPY"] == ["--from=build /opt/venv /opt/venv"]
    # The legacy builder (CI) has no RUN --mount.
    assert not any(op == "RUN" and "--mount" in args for op, args in instructions)


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = (REPO / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*") :][:1] == ["*"]
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "setup.py",
        "MANIFEST.in",
        "README.md",
        "LICENSE",
        "proto",
        "service",
        ".ci/wheelhouse",
    }


@pytest.mark.parametrize(
    "script",
    [
        "e2e/kind-up.sh",
        "e2e/run-kind.sh",
        "e2e/image_test.sh",
        ".ci/image-test",
        ".ci/install-helm",
    ],
)
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (REPO / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_make_help_lists_every_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {line.split(":", 1)[0] for line in shown.splitlines()}
    assert targets - listed == set(), "targets without a '## name: what it does' line"
    assert "help" in listed
