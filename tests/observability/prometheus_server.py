"""Debian's Prometheus, run as a plain process for the tests (never the system service)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
DASHBOARD = REPOSITORY / "dashboards" / "ad-event-processor.json"
ALERTS_DIR = REPOSITORY / "dashboards" / "alerts"
RULES = ALERTS_DIR / "ad-event-processor.rules.yaml"


def require_tool(name: str) -> str:
    """The path of a Prometheus tool; in CI its absence fails the test instead of skipping."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name,) if p.exists()), None
    )
    if found:
        return found
    message = f"{name} is not installed (Debian package `prometheus`; .ci/system-deps installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params: str | Sequence[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.base_url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; raises (HTTP 400) when the expression does not parse."""
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        if data["resultType"] == "scalar":
            result = [{"metric": {}, "value": data["result"]}]
        return result

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result:
                return result
            assert time.monotonic() < deadline, f"no data for {expr} within {timeout_s}s"
            time.sleep(0.5)


@contextmanager
def running_prometheus(
    workdir: Path, job: str, targets: list[str], rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(path) for path in rule_files],
                "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base_url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready within 30s"
            time.sleep(0.2)
        yield Prometheus(base_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
