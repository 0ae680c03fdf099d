"""A real Prometheus server (Debian's `prometheus` package) on a free loopback port.

Debian builds Prometheus without Kubernetes service discovery, so the chart's
scrape job is run here with its kubernetes_sd_configs replaced by a static
target carrying the `__meta_kubernetes_*` labels that discovery would attach
(see kubernetes_sd_as_static): relabelling, rules and queries are then the
real thing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.support import free_port, require_tool

PROMETHEUS_HINT = "apt-get install prometheus; .ci/system-deps does"


def kubernetes_sd_as_static(
    job: Mapping[str, Any], targets: Sequence[tuple[str, Mapping[str, str]]]
) -> dict[str, Any]:
    """A copy of a scrape job whose pod discovery is replaced by these (address, meta labels)."""
    static = dict(job)
    static.pop("kubernetes_sd_configs")
    static["static_configs"] = [
        {"targets": [address], "labels": dict(labels)} for address, labels in targets
    ]
    return static


def pod_meta_labels(
    namespace: str, pod: str, port_name: str, phase: str = "Running", node: str = "node-1"
) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives a container port's target."""
    return {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_node_name": node,
    }


@dataclass
class PrometheusProcess:
    config: dict[str, Any]
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> PrometheusProcess:
        binary = require_tool("prometheus", PROMETHEUS_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response,
            ):
                if response.status == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready within {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[PrometheusProcess]:
    prometheus = PrometheusProcess(config, workdir).start()
    try:
        yield prometheus
    finally:
        prometheus.stop()


class PrometheusApi:
    """Prometheus' HTTP API (the same calls against a local or a port-forwarded server)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.base_url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        return list(data["result"])

    def wait_for(self, expr: str, predicate: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Poll expr until predicate(result) is true; the last result."""
        deadline = time.monotonic() + timeout_s
        result = self.query(expr)
        while not predicate(result):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{expr} did not satisfy the condition in {timeout_s}s: {result}"
                )
            time.sleep(0.5)
            result = self.query(expr)
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/rules")["groups"])
