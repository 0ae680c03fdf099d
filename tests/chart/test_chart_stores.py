"""database.type as one store or several in the chart: the string and list forms render
the same pod, every listed store is wired and checked, names are checked, the spill is on
the data volume and fits it, and a Redis Cluster of the user's is flagged to the server.
What the chart renders is read back by the service's own settings loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from aep.settings import Settings, StoreType, load_settings
from tests.helpers.chart_render import CHART, Helm, Manifests, container, render, render_error

MIB = 1024**2
BOTH = (StoreType.MONGODB, StoreType.REDIS)
KAFKA = {"externalKafka.bootstrapServers": "kafka-0:9092"}


def scenario(name: str) -> tuple[Path, ...]:
    return (CHART / "ci" / f"{name}-values.yaml",)


def settings_of(manifests: Manifests, tmp_path: Path, drop: tuple[str, ...] = ()) -> Settings:
    """The rendered config.yaml and the pod's env, read by the service's settings loader."""
    path = tmp_path / "config.yaml"
    path.write_text(manifests.config_text())
    environ = {k: v for k, v in manifests.server_environ().items() if k not in drop}
    return load_settings(path, environ=environ)


def values_file(tmp_path: Path, name: str, values: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def server_pod(manifests: Manifests) -> dict[str, Any]:
    return dict(manifests.server["spec"]["template"]["spec"])


def test_string_and_list_forms_render_the_same_server(helm: Helm, tmp_path: Path) -> None:
    forms = {
        "list": ["mongodb", "redis", "kafka"],
        "string": "mongodb,redis,kafka",
        "spaced": " mongodb , redis,kafka ",
    }
    renders = [
        render(helm, (values_file(tmp_path, name, {"database": {"type": form}}),), sets=KAFKA)
        for name, form in forms.items()
    ]
    renders.append(render(helm, sets={**KAFKA, "database.type": "{mongodb,redis,kafka}"}))
    renders.append(render(helm, sets={**KAFKA, "database.type": "mongodb\\,redis\\,kafka"}))
    first = renders[0]
    assert first.server_environ()["AEP_DATABASE_TYPE"] == "mongodb,redis,kafka"
    for other in renders[1:]:
        assert other.server_environ() == first.server_environ()
        assert other.config_text() == first.config_text()
    settings = settings_of(first, tmp_path)
    assert settings.database.type == (StoreType.MONGODB, StoreType.REDIS, StoreType.KAFKA)


def test_one_store_as_a_string_or_a_one_item_list(helm: Helm, tmp_path: Path) -> None:
    off = {"mongodb.enabled": "false"}
    as_string = render(helm, sets={**off, "database.type": "redis"})
    as_list = render(helm, sets={**off, "database.type": "{redis}"})
    assert as_string.server_environ() == as_list.server_environ()
    assert as_string.config_text() == as_list.config_text()
    settings = settings_of(as_string, tmp_path)
    assert settings.database.type == (StoreType.REDIS,)
    assert not settings.spills  # one store: a full lane refuses, as before


def test_the_default_install_writes_to_both_bundled_stores(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm)
    settings = settings_of(manifests, tmp_path)
    assert settings.database.type == BOTH
    for store, url, port in (
        ("redis", settings.database.redis.url, 6379),
        ("mongodb", settings.database.mongodb.uri, 27017),
    ):
        assert url.startswith(f"{store}://aep-{store}:{port}")
        service = manifests.get("Service", f"aep-{store}")
        assert port in [p["port"] for p in service["spec"]["ports"]]
        statefulset = manifests.get("StatefulSet", f"aep-{store}")
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    # No Secret is needed for either: the URLs are in the config file.
    assert {k for k, v in manifests.server_environ().items() if v.startswith("secret:")} == set()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"database.type": "postgres"},
            'database.type=postgres: "postgres" is not a store; known: file, redis, mongodb, kafka',
        ),
        (
            {"database.type": "mongodb\\,redis\\,postgres"},
            '"postgres" is not a store; known: file, redis, mongodb, kafka',
        ),
        (
            {"database.type": "redis\\,mongodb\\,redis"},
            "database.type=redis,mongodb,redis: redis is listed twice",
        ),
        ({"database.type": "{mongodb,redis,mongodb}"}, "mongodb is listed twice"),
        ({"database.type": "redis\\,"}, "database.type=redis,: an empty store name"),
    ],
)
def test_unknown_empty_and_repeated_names_are_refused(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    assert message in " ".join(render_error(helm, sets=sets).split())


def test_an_unknown_name_in_the_list_form_is_refused_by_the_schema(helm: Helm) -> None:
    error = render_error(helm, sets={"database.type": "{mongodb,postgres}"})
    assert "schema" in error
    assert "mongodb" in error and "kafka" in error  # the allowed names are listed


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"mongodb.enabled": "false"},
            "database.type=mongodb,redis lists mongodb: set mongodb.enabled=true",
        ),
        (
            {"redis.enabled": "false"},
            "database.type=mongodb,redis lists redis: set redis.enabled=true",
        ),
        (
            {"database.type": "{mongodb,redis,kafka}"},
            "database.type=mongodb,redis,kafka lists kafka: set externalKafka.bootstrapServers",
        ),
        (
            {"database.type": "{mongodb,kafka}", **KAFKA},
            "redis.enabled deploys a Redis that the server does not use "
            "(database.type=mongodb,kafka)",
        ),
        (
            {"database.type": "{redis,file}"},
            "mongodb.enabled deploys a MongoDB that the server does not use "
            "(database.type=redis,file)",
        ),
    ],
)
def test_every_listed_store_is_checked(helm: Helm, sets: dict[str, str], message: str) -> None:
    assert message in " ".join(render_error(helm, sets=sets).split())


def test_external_stores_in_a_list_come_from_secrets(helm: Helm, tmp_path: Path) -> None:
    sets = {
        "redis.enabled": "false",
        "externalRedis.existingSecret": "redis-url",
        "mongodb.enabled": "false",
        "externalMongodb.existingSecret": "mongodb-uri",
    }
    manifests = render(helm, sets=sets)
    environ = manifests.server_environ()
    assert environ["AEP_DATABASE_REDIS_URL"] == "secret:redis-url/url"
    assert environ["AEP_DATABASE_MONGODB_URI"] == "secret:mongodb-uri/uri"
    assert settings_of(manifests, tmp_path).database.type == BOTH
    names = {w["metadata"]["name"] for w in manifests.workloads()}
    assert names == {"aep-grafana", "aep-prometheus", "aep-ad-event-processor"}


def test_the_multi_store_scenario(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, scenario("multi-store"))
    settings = settings_of(manifests, tmp_path)
    assert settings.database.type == (StoreType.MONGODB, StoreType.REDIS, StoreType.KAFKA)
    assert settings.database.redis.url == "redis://aep-redis:6379/0"
    assert settings.database.mongodb.uri == "mongodb://aep-mongodb:27017"
    assert settings.database.kafka.bootstrap_servers == "events-kafka-bootstrap.kafka.svc:9092"
    assert settings.spills
    assert settings.spill.max_bytes == 1024 * MIB
    (claim,) = manifests.server["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "4Gi"


def test_the_redis_cluster_scenario(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, scenario("redis-cluster"))
    environ = manifests.server_environ()
    assert environ["AEP_DATABASE_REDIS_CLUSTER"] == "true"
    assert environ["AEP_DATABASE_REDIS_URL"] == "secret:ad-events-redis-cluster/url"
    # database.redis.cluster is the server's on another branch: load the rest.
    settings = settings_of(manifests, tmp_path, drop=("AEP_DATABASE_REDIS_CLUSTER",))
    assert settings.database.type == (StoreType.REDIS,)
    assert settings.database.redis.url == "secret:ad-events-redis-cluster/url"
    assert not [w for w in manifests.workloads() if "redis" in w["metadata"]["name"]]
    assert "cluster" not in manifests.config_text()


def test_no_cluster_flag_without_external_cluster(helm: Helm) -> None:
    assert "AEP_DATABASE_REDIS_CLUSTER" not in render(helm).server_environ()
    sets = {"database.type": "mongodb", "redis.enabled": "false", "externalRedis.cluster": "true"}
    # Not listed: externalRedis is unused, like externalRedis.url.
    assert "AEP_DATABASE_REDIS_CLUSTER" not in render(helm, sets=sets).server_environ()


def test_a_cluster_flag_on_the_bundled_redis_is_refused(helm: Helm) -> None:
    error = render_error(helm, sets={"externalRedis.cluster": "true"})
    assert "externalRedis.cluster describes a Redis Cluster of yours" in error
    assert "set redis.enabled=false" in error


SHARED_ONE_STORE = {
    "persistence.claim": "shared",
    "persistence.accessModes[0]": "ReadWriteMany",
    "database.type": "redis",
    "mongodb.enabled": "false",
}


@pytest.mark.parametrize(
    "sets",
    [{}, {"persistence.enabled": "false"}, SHARED_ONE_STORE],
    ids=["claim-per-pod", "empty-dir", "shared-one-store"],
)
def test_the_spill_is_on_the_data_volume_with_the_dead_letters(
    helm: Helm, sets: dict[str, str], tmp_path: Path
) -> None:
    manifests = render(helm, sets=sets)
    settings = settings_of(manifests, tmp_path)
    environ = manifests.server_environ()
    assert Path(environ["AEP_SPILL_DIR"]) == settings.spill.dir
    assert environ["AEP_SPILL_MAX_BYTES"] == str(512 * MIB) == str(settings.spill.max_bytes)
    pod = server_pod(manifests)
    mounts = container(pod, "server")["volumeMounts"]

    def volume_of(directory: Path) -> str:
        mount = max(
            (m for m in mounts if directory.is_relative_to(m["mountPath"])),
            key=lambda m: len(m["mountPath"]),
        )
        assert not mount.get("readOnly")
        return str(mount["name"])

    assert volume_of(settings.spill.dir) == volume_of(settings.dead_letter.dir) == "data"
    assert settings.spill.dir.is_absolute()
    # A volume, so the spill outlives a container restart: a claim per pod, the
    # release's one claim, or an emptyDir (the pod's own).
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = manifests.server["spec"].get("volumeClaimTemplates", [])
    if not sets:
        assert "data" not in volumes
        assert [c["metadata"]["name"] for c in claims] == ["data"]
    elif "persistence.enabled" in sets:
        assert volumes["data"]["emptyDir"] == {"sizeLimit": "2Gi"}
    else:
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "aep-ad-event-processor"


def test_the_data_volume_must_hold_every_spill(helm: Helm) -> None:
    # Default: 2 stores x 512Mi + 512Mi headroom = 1536Mi within the 2Gi claim.
    error = render_error(helm, sets={"persistence.size": "1Gi"})
    assert "persistence.size (1Gi) must hold the spill of each of the 2 listed stores" in error
    assert "at least 1536Mi" in error
    error = render_error(
        helm, sets={"persistence.enabled": "false", "persistence.emptyDir.sizeLimit": "1Gi"}
    )
    assert "persistence.emptyDir.sizeLimit (1Gi) must hold" in error
    error = render_error(helm, sets={"spill.maxBytes": "1Gi"})
    assert "at least 2560Mi" in error
    # Three stores fill the 2Gi claim exactly.
    render(helm, sets={"database.type": "{mongodb,redis,kafka}", **KAFKA})


@pytest.mark.parametrize(
    "sets",
    [
        {"persistence.size": "1Gi", "config.spill.policy": "never"},
        {"persistence.size": "1Gi", "database.type": "redis", "mongodb.enabled": "false"},
        {"persistence.enabled": "false", "persistence.emptyDir.sizeLimit": "null"},
    ],
    ids=["never-spills", "one-store", "no-size-limit"],
)
def test_no_size_check_without_a_spill_or_a_limit(helm: Helm, sets: dict[str, str]) -> None:
    render(helm, sets=sets)


def test_one_store_that_always_spills_is_checked(helm: Helm) -> None:
    sets = {"database.type": "redis", "mongodb.enabled": "false", "persistence.size": "512Mi"}
    render(helm, sets=sets)
    error = render_error(helm, sets={**sets, "config.spill.policy": "always"})
    assert "each of the 1 listed stores" in error


def test_a_shared_claim_cannot_hold_a_spill(helm: Helm) -> None:
    sets = {"persistence.claim": "shared", "persistence.accessModes[0]": "ReadWriteMany"}
    error = render_error(helm, sets=sets)
    assert "is replayed by the pod that wrote it" in error
    assert "persistence.claim=perPod" in error
    render(helm, sets={**sets, "config.spill.policy": "never"})


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"config.spill.dir": "/elsewhere"}, "config.spill.dir is set by the chart"),
        ({"config.spill.max_bytes": "1GiB"}, "set spill.maxBytes instead"),
        (
            {"env[0].name": "AEP_DATABASE_TYPE", "env[0].value": "file"},
            "env: AEP_DATABASE_TYPE is set by the chart; set database.type instead",
        ),
        ({"env[0].name": "AEP_SPILL_DIR", "env[0].value": "/x"}, "env: AEP_SPILL_DIR is set"),
        ({"spill.maxBytes": "1k"}, "spill.maxBytes (1k) is below the server's least spill"),
    ],
)
def test_the_chart_owns_the_spill_location_and_the_store_list(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    assert message in render_error(helm, sets=sets)


def test_the_schema_checks_the_spill_size(helm: Helm) -> None:
    error = render_error(helm, sets={"spill.maxBytes": "1GiB"})
    assert "schema" in error and "maxBytes" in error


def test_the_spill_policy_can_be_tuned_under_config(helm: Helm, tmp_path: Path) -> None:
    manifests = render(helm, sets={"config.spill.policy": "never"})
    settings = settings_of(manifests, tmp_path)
    assert not settings.spills
