"""database.type=kafka in the chart: externalKafka.* becomes the server's Kafka settings,
read back by the service's own settings loader; the SASL password and the CA come from
Secrets; inconsistent values fail the render with a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from aep.settings import KafkaSecurityProtocol, Settings, StoreType, load_settings
from tests.helpers.chart_render import CHART, Helm, Manifests, container, render, render_error

KAFKA_VALUES = (CHART / "ci" / "kafka-values.yaml",)
PLAIN_KAFKA = {
    "database.type": "kafka",
    "redis.enabled": "false",
    "mongodb.enabled": "false",
    "externalKafka.bootstrapServers": "kafka-0:9092\\,kafka-1:9092",
}


def settings_of(manifests: Manifests, tmp_path: Path) -> Settings:
    """The rendered config.yaml and the pod's env, read by the service's settings loader."""
    path = tmp_path / "config.yaml"
    path.write_text(manifests.config_text())
    return load_settings(path, environ=manifests.server_environ())


def test_the_kafka_scenario_configures_sasl_over_tls_from_secrets(
    helm: Helm, tmp_path: Path
) -> None:
    manifests = render(helm, KAFKA_VALUES)
    settings = settings_of(manifests, tmp_path)
    kafka = settings.database.kafka
    assert settings.database.type == (StoreType.KAFKA,)
    assert kafka.bootstrap_servers == "events-kafka-bootstrap.kafka.svc:9093"
    assert kafka.topic == "ad_events"
    assert kafka.security_protocol is KafkaSecurityProtocol.SASL_SSL
    assert kafka.sasl_mechanism.value == "SCRAM-SHA-512"
    assert kafka.sasl_username == "ad-event-processor"
    assert kafka.compression.value == "zstd"  # from config.database.kafka
    assert "password" not in manifests.config_text()  # never in the ConfigMap
    assert kafka.sasl_password is not None
    assert kafka.sasl_password.get_secret_value() == "secret:ad-events-kafka-user/password"
    pod = manifests.server["spec"]["template"]["spec"]
    server = container(pod, "server")
    env = {item["name"]: item for item in server["env"]}
    assert env["AEP_DATABASE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "ad-events-kafka-user",
        "key": "password",
    }
    mounts = {mount["name"]: mount for mount in server["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert str(kafka.ssl_cafile) == mounts["kafka-ca"]["mountPath"] + "/ca.crt"
    assert volumes["kafka-ca"]["secret"]["secretName"] == "ad-events-kafka-ca"
    # No bundled store is rendered for a Kafka the user runs.
    assert not [d for d in manifests.of_kind("StatefulSet") if "redis" in d["metadata"]["name"]]


def test_plaintext_kafka_needs_no_secret(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, sets=PLAIN_KAFKA)
    kafka = settings_of(manifests, tmp_path).database.kafka
    assert kafka.bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert kafka.security_protocol is KafkaSecurityProtocol.PLAINTEXT
    assert kafka.sasl_username is None and kafka.ssl_cafile is None
    server = container(manifests.server["spec"]["template"]["spec"], "server")
    assert "AEP_DATABASE_KAFKA_SASL_PASSWORD" not in {e["name"] for e in server.get("env") or []}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"database.type": "kafka", "redis.enabled": "false", "mongodb.enabled": "false"},
            "database.type=kafka: set externalKafka.bootstrapServers",
        ),
        (
            {**PLAIN_KAFKA, "externalKafka.securityProtocol": "SASL_SSL"},
            "externalKafka.securityProtocol=SASL_SSL: set externalKafka.sasl.username and "
            "externalKafka.sasl.existingSecret",
        ),
        (
            {**PLAIN_KAFKA, "externalKafka.tls.caSecret": "ca"},
            "externalKafka.tls.caSecret needs externalKafka.securityProtocol SSL or SASL_SSL",
        ),
        (
            {**PLAIN_KAFKA, "config.database.kafka.topic": "other"},
            "config.database.kafka.topic is set by the chart; set externalKafka.topic instead",
        ),
        ({**PLAIN_KAFKA, "externalKafka.securityProtocol": "TLS"}, "securityProtocol"),
    ],
)
def test_inconsistent_kafka_values_fail_with_a_message(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    assert message in render_error(helm, sets=sets)
