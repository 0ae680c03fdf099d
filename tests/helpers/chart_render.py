"""Real Helm binaries rendering the chart, and helpers to look at what they rendered.

Helm comes from AEP_HELM (paths separated by os.pathsep), else .ci/tools/helm-*/helm
(installed by .ci/install-helm), else `helm` on PATH. Locally the chart tests skip
when there is none; in CI (CI=true) a missing Helm 3 or Helm 4 is a failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.support import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ad-event-processor"
SCENARIOS = sorted(CHART.glob("ci/*-values.yaml"))
KIND_VALUES = REPO / "k8s" / "kind-values.yaml"
# The ends of what the chart is validated for: its kubeVersion's lower bound
# (Chart.yaml) and the newest schemas kubernetes-validate carries.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE = "aep"
NAMESPACE = "ads"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Helm:
    path: Path
    version: str  # e.g. "v4.1.4"

    @property
    def major(self) -> int:
        return int(self.version.lstrip("v").split(".")[0])

    def __str__(self) -> str:
        return f"helm-{self.version}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        # Helm must not read or write the user's Helm state.
        env["HELM_CACHE_HOME"] = env["HELM_CONFIG_HOME"] = env["HELM_DATA_HOME"] = str(_helm_home())
        result = subprocess.run(
            [str(self.path), *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check and result.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result


class HelmError(Exception):
    pass


@functools.cache
def _helm_home() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="aep-helm-home-"))


def _candidates() -> Iterator[Path]:
    if os.environ.get("AEP_HELM"):
        yield from (Path(p) for p in os.environ["AEP_HELM"].split(os.pathsep) if p)
        return
    yield from sorted((REPO / ".ci" / "tools").glob("helm-*/helm"))
    on_path = shutil.which("helm")
    if on_path:
        yield Path(on_path)


@functools.cache
def helm_binaries() -> tuple[Helm, ...]:
    found: dict[str, Helm] = {}
    for path in _candidates():
        if not os.access(path, os.X_OK):
            continue
        result = subprocess.run(
            [str(path), "version", "--template", "{{.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0:
            version = result.stdout.strip()
            found.setdefault(version, Helm(path, version))
    return tuple(sorted(found.values(), key=lambda helm: helm.version))


def require_helm() -> tuple[Helm, ...]:
    """The Helm binaries; skips the test without one, fails it in CI."""
    helms = helm_binaries()
    if not helms:
        skip_or_fail("no Helm binary was found (make helm installs Helm 3.18 and 4.1)")
    return helms


def template_args(
    values_files: Sequence[Path] = (),
    sets: Mapping[str, str] | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
) -> list[str]:
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
    ]
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render_text(
    helm: Helm,
    values_files: Sequence[Path] = (),
    sets: Mapping[str, str] | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
) -> str:
    return helm.run(*template_args(values_files, sets, kube_version)).stdout


@functools.cache
def _render_cached(
    helm: Helm,
    values_files: tuple[Path, ...],
    sets: tuple[tuple[str, str], ...],
    kube_version: str,
) -> tuple[Doc, ...]:
    text = render_text(helm, values_files, dict(sets), kube_version)
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def render(
    helm: Helm,
    values_files: Sequence[Path] = (),
    sets: Mapping[str, str] | None = None,
    kube_version: str = KUBE_VERSIONS[-1],
) -> Manifests:
    docs = _render_cached(
        helm, tuple(values_files), tuple(sorted((sets or {}).items())), kube_version
    )
    return Manifests(docs)


def render_error(
    helm: Helm, values_files: Sequence[Path] = (), sets: Mapping[str, str] | None = None
) -> str:
    """stderr of a `helm template` that must fail (AssertionError if it renders)."""
    result = helm.run(*template_args(values_files, sets), check=False)
    assert result.returncode != 0, f"helm template rendered with {sets}, expected a failure"
    return result.stderr


class Manifests:
    """The documents of one render, looked up by kind and name."""

    def __init__(self, docs: Sequence[Doc]) -> None:
        self.docs = list(docs)

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.docs)

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> Doc:
        matches = [
            doc for doc in self.of_kind(kind) if name is None or doc["metadata"]["name"] == name
        ]
        assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
        return matches[0]

    def find(self, kind: str, name: str) -> Doc | None:
        for doc in self.of_kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        return None

    @property
    def server(self) -> Doc:
        """The server's Deployment or StatefulSet (component=server)."""
        for doc in self.workloads():
            if doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == (
                "server"
            ):
                return doc
        raise AssertionError("no workload with component=server")

    def workload(self, app: str) -> Doc:
        """The workload of a subchart, by its pods' app.kubernetes.io/name (redis, grafana...)."""
        for doc in self.workloads():
            if doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == app:
                return doc
        raise AssertionError(f"no workload with app.kubernetes.io/name={app}")

    def workloads(self) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] in ("Deployment", "StatefulSet")]

    def pod_specs(self) -> list[tuple[str, Doc]]:
        """(name, pod spec) of every workload and of bare Pods (the helm test pod)."""
        specs = [
            (doc["metadata"]["name"], doc["spec"]["template"]["spec"]) for doc in self.workloads()
        ]
        specs += [(doc["metadata"]["name"], doc["spec"]) for doc in self.of_kind("Pod")]
        return specs

    def pod_labels(self) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of the pods of every workload and of bare Pods."""
        pods = [
            (doc["metadata"]["name"], dict(doc["spec"]["template"]["metadata"]["labels"]))
            for doc in self.workloads()
        ]
        pods += [
            (doc["metadata"]["name"], dict(doc["metadata"]["labels"]))
            for doc in self.of_kind("Pod")
        ]
        return pods

    def config_text(self) -> str:
        configmap = self.get("ConfigMap", f"{RELEASE}-ad-event-processor")
        return str(configmap["data"]["config.yaml"])

    def server_environ(self) -> dict[str, str]:
        """The server container's env as the pod gets it; a value read from a
        Secret stands in as `secret:<name>/<key>` (the chart never sees it)."""
        server = container(self.server["spec"]["template"]["spec"], "server")
        environ: dict[str, str] = {}
        for item in server.get("env") or []:
            secret = item.get("valueFrom", {}).get("secretKeyRef")
            if secret is not None:
                environ[item["name"]] = f"secret:{secret['name']}/{secret['key']}"
            elif "value" in item:
                environ[item["name"]] = str(item["value"])
        return environ


def container(pod_spec: Doc, name: str) -> Doc:
    for candidate in pod_spec["containers"]:
        if candidate["name"] == name:
            return dict(candidate)
    raise AssertionError(f"no container {name}")


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when an equality-based label selector matches these labels."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())
