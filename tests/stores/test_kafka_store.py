# ruff: noqa: E501  (the table of refused settings reads best one case a line)
"""The Kafka store against a real Kafka-protocol broker (Tansu 0.6, in memory).

What the contract suite does not cover: the record's key and value bytes, the
partition a key lands on, the producer's settings, every compression codec, a
broker that hangs mid-write (SIGSTOP), settings that are refused, and the real
service process writing what gRPC clients sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import orjson
import pytest
from confluent_kafka import Producer

from aep.events.schema import EventRecord, format_epoch
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from aep.settings import ConfigError, KafkaCompression, load_settings
from aep.storage import StoreError
from aep.storage.kafka import KafkaStore
from tests.helpers.backends import Backend
from tests.helpers.servers import KafkaServer
from tests.helpers.support import ServerProcess, batch_of, stored_forms, valid_event


@pytest.fixture
def kafka(kafka_server: KafkaServer, tmp_path: Path) -> Backend:
    return Backend("kafka", tmp_path, kafka=kafka_server)


def events(start: int, count: int, prefix: str = "k") -> list[EventRecord]:
    return stored_forms(
        [
            valid_event(event_id=f"{prefix}{i}", ad_id=f"ad-{i % 5}", attributes={"n": str(i)})
            for i in range(start, start + count)
        ],
        format_epoch(1_790_000_000.25),
    )


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as an unsigned int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[i * 4 : i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[length & ~3 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner gives a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_kafkas_own_test_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2 (signed ints there).
    for text, signed in (
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ):
        assert murmur2(text.encode()) == signed & 0xFFFFFFFF, text


async def test_key_is_the_event_id_and_value_the_stored_line_byte_for_byte(
    kafka: Backend,
) -> None:
    batch = batch_of(events(0, 200))
    store = await kafka.open_store()
    try:
        result = await store.write_batch(batch)
    finally:
        await store.close()
    assert (result.written, result.duplicates) == (200, 0)
    expected = {
        event_id.encode(): line
        for event_id, line in zip(batch.event_ids, batch.lines(), strict=True)
    }
    stored = kafka.read_kafka()
    assert len(stored) == 200
    assert {key: value for key, value, _ in stored} == expected
    assert all(not value.endswith(b"\n") for _, value, _ in stored)
    sample = orjson.loads(expected[b"k7"])
    assert next(iter(sample)) == "event_id" and sample["ad_id"] == "ad-2"


async def test_records_are_partitioned_by_key_as_the_java_client_does(
    kafka: Backend, kafka_server: KafkaServer
) -> None:
    kafka_server.create_topic(kafka.name, partitions=5)
    store = await kafka.open_store()
    try:
        await store.write_batch(batch_of(events(0, 300)))
        await store.write_batch(batch_of(events(0, 300)))  # the same keys again
    finally:
        await store.close()
    stored = kafka.read_kafka()
    assert len(stored) == 600
    partitions_of: dict[bytes, set[int]] = {}
    for key, _value, partition in stored:
        partitions_of.setdefault(key, set()).add(partition)
    assert all(partitions == {java_partition(key, 5)} for key, partitions in partitions_of.items())
    assert len(Counter(partition for _, _, partition in stored)) == 5  # spread over all


def test_the_producer_waits_for_every_replica_and_is_idempotent(kafka: Backend) -> None:
    store = kafka.make_store()
    assert isinstance(store, KafkaStore)
    config = store.config
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"
    assert config["compression.type"] == "lz4"  # the default
    assert config["message.timeout.ms"] == 10_000  # operation_timeout
    assert config["linger.ms"] == 5.0
    assert config["client.id"] == "ad-event-processor"
    assert config["bootstrap.servers"] == kafka.settings().kafka.bootstrap_servers


@pytest.mark.parametrize("compression", list(KafkaCompression))
async def test_every_compression_codec_goes_through_the_broker(
    kafka: Backend, compression: KafkaCompression
) -> None:
    batch = batch_of(events(0, 300))
    store = await kafka.open_store(compression=compression)
    assert isinstance(store, KafkaStore)
    assert store.config["compression.type"] == compression.value
    try:
        await store.write_batch(batch)
    finally:
        await store.close()
    stored = {key: value for key, value, _ in kafka.read_kafka()}
    assert stored == {
        i.encode(): line for i, line in zip(batch.event_ids, batch.lines(), strict=True)
    }


def test_tls_and_sasl_settings_reach_librdkafka_under_its_own_names(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    settings = load_settings(
        environ={
            "AEP_DATABASE_TYPE": "kafka",
            "AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS": "b-1.example:9096,b-2.example:9096",
            "AEP_DATABASE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "AEP_DATABASE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "AEP_DATABASE_KAFKA_SASL_USERNAME": "aep",
            "AEP_DATABASE_KAFKA_SASL_PASSWORD": "s3cret",
            "AEP_DATABASE_KAFKA_SSL_CAFILE": str(ca),
            "AEP_DATABASE_KAFKA_CLIENT_ID": "aep-eu-1",
            "AEP_DATABASE_KAFKA_LINGER": "20ms",
            "AEP_DATABASE_KAFKA_COMPRESSION": "zstd",
        }
    )
    store = KafkaStore.from_settings(settings.database, worker_count=4)
    config = store.config
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("aep", "s3cret")
    assert config["ssl.ca.location"] == str(ca)
    assert config["client.id"] == "aep-eu-1"
    assert config["linger.ms"] == 20.0
    assert config["compression.type"] == "zstd"
    # The password is not printed with the configuration.
    assert "s3cret" not in str(settings.database.kafka)
    # librdkafka itself takes every key and value (building a producer connects
    # to nothing yet, and these hosts are never resolved: it is closed at once).
    # (Without the empty CA file, which librdkafka rightly refuses to load.)
    del config["ssl.ca.location"]
    producer = Producer({**config, "bootstrap.servers": "127.0.0.1:1"})
    producer.purge()
    producer.close()


@pytest.mark.parametrize(
    ("env", "key", "says"),
    [
        ({"AEP_DATABASE_KAFKA_COMPRESSION": "brotli"}, "database.kafka.compression", "zstd"),
        ({"AEP_DATABASE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "database.kafka.security_protocol", "SSL"),
        ({"AEP_DATABASE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "database.kafka.sasl_mechanism", "PLAIN"),
        ({"AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS": "kafka"}, "database.kafka.bootstrap_servers", "host:port"),
        ({"AEP_DATABASE_KAFKA_BOOTSTRAP_SERVERS": "a:9092,b:99999"}, "database.kafka.bootstrap_servers", "b:99999"),
        ({"AEP_DATABASE_KAFKA_TOPIC": "ad events"}, "database.kafka.topic", "topic name"),
        ({"AEP_DATABASE_KAFKA_TOPIC": ""}, "database.kafka.topic", "topic name"),
        ({"AEP_DATABASE_KAFKA_LINGER": "soon"}, "database.kafka.linger", "duration"),
        ({"AEP_DATABASE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "database.kafka", "sasl_username"),
        ({"AEP_DATABASE_KAFKA_SASL_USERNAME": "aep", "AEP_DATABASE_KAFKA_SASL_PASSWORD": "x"}, "database.kafka", "SASL_SSL"),
        ({"AEP_DATABASE_KAFKA_SSL_CAFILE": "/ca.pem"}, "database.kafka", "ssl_cafile"),
        ({"AEP_DATABASE_KAFKA_SECURITY_PROTOCOL": "SSL", "AEP_DATABASE_KAFKA_SSL_CERTFILE": "/c.pem"}, "database.kafka", "ssl_keyfile"),
        ({"AEP_DATABASE_KAFKA_BROKERS": "a:9092"}, "", ""),  # names no key: ignored
    ],
)  # fmt: skip
def test_bad_kafka_settings_are_refused_naming_the_key(
    env: dict[str, str], key: str, says: str
) -> None:
    environ = {"AEP_DATABASE_TYPE": "kafka", **env}
    if not key:
        assert load_settings(environ=environ).database.kafka.bootstrap_servers == "localhost:9092"
        return
    with pytest.raises(ConfigError) as refused:
        load_settings(environ=environ)
    message = str(refused.value)
    print(f"{env}: {message}")
    assert f"{key}:" in message
    assert says in message
    if key != "database.kafka":  # one key's own value: the message names its env var too
        [env_name] = env
        assert env_name in message


async def test_ping_fails_within_the_connect_timeout_while_the_broker_hangs(
    tmp_path: Path,
) -> None:
    broker = KafkaServer(tmp_path / "broker")
    broker.start()
    backend = Backend("kafka", tmp_path, kafka=broker)
    try:
        store = await backend.open_store()
        try:
            await store.ping()
            broker.pause()
            started = time.monotonic()
            with pytest.raises(StoreError, match="kafka store"):
                await store.ping()
            took = time.monotonic() - started
            broker.resume()
            await store.ping()
        finally:
            broker.resume()
            await store.close()
    finally:
        broker.stop()
    assert took < 2.0 + 1.5  # connect_timeout is 2s in these settings


async def test_broker_hung_mid_write_fails_batches_in_time_and_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    """SIGSTOP the broker while 4 writers write: every write either returns (all its
    records acknowledged) or raises StoreError within operation_timeout; retried
    like the pipeline does, every acknowledged event is in the topic."""
    broker = KafkaServer(tmp_path / "broker")
    broker.start()
    backend = Backend("kafka", tmp_path, kafka=broker)
    operation_timeout = 2.0
    acknowledged: list[str] = []
    sent: list[str] = []
    failures: list[float] = []
    slowest_failure = 0.0
    paused = asyncio.Event()
    resumed = asyncio.Event()
    store = await backend.open_store(writers=4)
    assert isinstance(store, KafkaStore)
    store._operation_timeout = operation_timeout  # bound each write tighter than 10s

    async def writer(worker: int) -> None:
        nonlocal slowest_failure
        sequence = 0
        while not resumed.is_set() or sequence < 40:
            sequence += 1
            records = events(0, 100, prefix=f"w{worker}-{sequence}-")
            ids = [str(record["event_id"]) for record in records]
            while True:  # the pipeline's retry: the same batch until it is stored
                sent.extend(ids)
                started = time.monotonic()
                try:
                    await store.write_batch(batch_of(records))
                except StoreError:
                    took = time.monotonic() - started
                    failures.append(took)
                    slowest_failure = max(slowest_failure, took)
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.extend(ids)
                break
            await asyncio.sleep(0.01)

    async def outage() -> None:
        while len(acknowledged) < 2000:  # noqa: ASYNC110 - a count, not an event
            await asyncio.sleep(0.01)
        broker.pause()
        paused.set()
        await asyncio.sleep(operation_timeout * 2.5)
        broker.resume()
        resumed.set()

    try:
        async with asyncio.timeout(90):
            await asyncio.gather(outage(), *(writer(w) for w in range(4)))
    finally:
        broker.resume()
        await store.close()
    try:
        stored = [key.decode() for key, _, _ in backend.read_kafka()]
    finally:
        broker.stop()
    missing = set(acknowledged) - set(stored)
    duplicates = len(stored) - len(set(stored))
    print(
        f"acknowledged={len(acknowledged)} sent={len(sent)} stored={len(stored)} "
        f"duplicates={duplicates} lost={len(missing)} failed_writes={len(failures)} "
        f"slowest_failure={slowest_failure:.2f}s"
    )
    assert paused.is_set() and resumed.is_set()
    assert failures, "no write failed while the broker was stopped"
    assert slowest_failure < operation_timeout + 0.5
    assert not missing, f"{len(missing)} acknowledged events not in the topic"
    assert set(stored) <= set(sent)


def test_the_service_writes_what_grpc_clients_send_to_the_topic(
    kafka: Backend, tmp_path: Path
) -> None:
    """The real server process with AEP_DATABASE_TYPE=kafka, committed acks over gRPC."""
    server = ServerProcess(
        tmp_path / "service", {**kafka.service_env(), "AEP_BATCH_FLUSH_INTERVAL": "20ms"}
    ).start()
    ids = [f"grpc-{i}" for i in range(300)]
    try:
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.AdEventServiceStub(channel)
            accepted: list[str] = []
            for offset in range(0, len(ids), 100):
                response = api.SendAdEventBatch(
                    pb.SendAdEventBatchRequest(
                        events=[valid_event(event_id=i) for i in ids[offset : offset + 100]],
                        ack_mode=pb.ACK_MODE_COMMITTED,
                    ),
                    timeout=20,
                )
                accepted += [
                    r.event_id for r in response.results if r.status == pb.EVENT_STATUS_ACCEPTED
                ]
            # An event without an id gets one from the server; that id is the key.
            single = api.SendAdEvent(
                pb.SendAdEventRequest(event=valid_event(), ack_mode=pb.ACK_MODE_COMMITTED),
                timeout=20,
            )
            state = api.HealthCheck(pb.HealthCheckRequest(), timeout=5)
        assert server.stop() == 0, server.log()
    finally:
        server.stop()
    assert accepted == ids
    assert single.event_id
    assert state.store_healthy
    stored = kafka.read_kafka()
    by_key = {key.decode(): orjson.loads(value) for key, value, _ in stored}
    assert len(stored) == 301
    assert set(by_key) == {*ids, single.event_id}
    assert all(record["event_id"] == key for key, record in by_key.items())
    assert by_key["grpc-5"]["event_type"] == "EVENT_TYPE_CLICK"
    assert '"store":"kafka"' in server.log().replace(" ", "")
