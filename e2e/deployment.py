"""The deployment under test, reached only through its public ports.

With AEP_E2E_GRPC, AEP_E2E_METRICS and AEP_E2E_PROMETHEUS set (e2e/run-kind.sh
sets them to port-forwards into a kind cluster) the suite drives that
deployment. Without them it starts a local stack here: the server (`python -m
aep` on free loopback ports), a real Prometheus scraping it with the chart's
alert rules, and redis-server when AEP_E2E_STORE=redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.prometheus_process import running_prometheus
from tests.helpers.servers import RedisServer
from tests.helpers.support import ServerProcess

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "charts" / "ad-event-processor" / "files" / "alerts.yaml"
JOB = "ad-event-processor"
# The labels Kubernetes service discovery gives the series in the chart's
# Prometheus; the local stack attaches the same ones to its static target.
LOCAL_NAMESPACE = "e2e"
LOCAL_POD = "local-0"


@dataclass(frozen=True)
class Endpoints:
    grpc: str  # host:port
    metrics_url: str  # http://host:port
    prometheus_url: str
    store: str
    local: bool


def url_of(address: str) -> str:
    return address if "://" in address else f"http://{address}"


def local_stack(workdir: Path, store: str) -> Iterator[Endpoints]:
    env = {"AEP_DATABASE_TYPE": store}
    redis: RedisServer | None = None
    if store == "redis":
        # The tests' own redis-server helper: a free loopback port, waited for until it answers.
        redis = RedisServer(workdir / "redis")
        redis.start()
        env["AEP_DATABASE_REDIS_URL"] = redis.url
    server = ServerProcess(workdir / "server", env)
    try:
        server.start()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{server.metrics_port}"],
                            "labels": {"namespace": LOCAL_NAMESPACE, "pod": LOCAL_POD},
                        }
                    ],
                }
            ],
        }
        with running_prometheus(config, workdir / "prometheus") as prometheus:
            yield Endpoints(
                grpc=server.address,
                metrics_url=f"http://127.0.0.1:{server.metrics_port}",
                prometheus_url=prometheus.url,
                store=store,
                local=True,
            )
        assert server.stop() == 0, f"the server did not stop cleanly:\n{server.log()}"
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        if redis is not None:
            redis.stop()
