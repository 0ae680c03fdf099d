"""Kafka store: one record per event, on confluent-kafka (librdkafka).

Stored form: topic `database.kafka.topic` (default `ad_events`), one record per
event; key = the `event_id` (UTF-8), value = the event's stored-form JSON line
exactly as the codec encoded it (no newline, no re-encoding). Partitioned by
key with `murmur2_random` (the Java client's partitioner, so an id lands on
the partition a Java producer would pick), so all records of one id share a
partition and a compacted topic keeps one of them.

Durability: `acks=all` and the idempotent producer. A batch counts as written
only once the broker acknowledged every one of its records; if any record
fails (or not all are acknowledged within `database.operation_timeout`) the
batch raises StoreError and the pipeline retries it whole.

Idempotency, honestly: at least once. The idempotent producer keeps librdkafka's
own retries of one producer session from duplicating or reordering records.
It cannot see a retry of a batch (the pipeline's, a dead-letter replay, a client
resending to another replica, a restart), so those append the record again;
`written` is the batch's size and `duplicates` always 0. Consumers that need an
id once dedupe by key, or read a compacted topic.

Why confluent-kafka and not aiokafka: tests/benchmarks/bench_kafka_clients.py
(figures in docs/kafka.md), and aiokafka 0.14 cannot do an idempotent producer
against the Tansu broker the tests run. The records are handed to librdkafka on
the event loop (produce() only queues them); one thread serves its delivery
reports and resolves one asyncio future per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from aep.events.block import EventBatch
from aep.settings import DatabaseSettings, KafkaSecurityProtocol, KafkaStoreSettings
from aep.storage.base import StoreError, WriteResult

logger = logging.getLogger(__name__)

# How long one poll() of the delivery thread blocks waiting for reports; also
# how soon that thread notices close().
_POLL_INTERVAL_S = 0.1
# librdkafka's bounds for these keys (milliseconds).
_MIN_CONNECT_TIMEOUT_MS = 1000
_MAX_REQUEST_TIMEOUT_MS = 900_000
# How long write_batch waits before trying again when librdkafka's local queue is full.
_QUEUE_FULL_WAIT_S = 0.005


def producer_config(
    settings: KafkaStoreSettings, *, connect_timeout: float, operation_timeout: float
) -> dict[str, Any]:
    """The librdkafka configuration of the store's producer (without callbacks)."""
    message_timeout_ms = max(1, round(operation_timeout * 1000))
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": settings.compression.value,
        "linger.ms": settings.linger * 1000,
        "partitioner": "murmur2_random",
        # A record not acknowledged within the operation timeout fails, so the
        # batch fails and the pipeline retries it (at least once).
        "message.timeout.ms": message_timeout_ms,
        "request.timeout.ms": min(message_timeout_ms, _MAX_REQUEST_TIMEOUT_MS),
        "socket.connection.setup.timeout.ms": max(
            _MIN_CONNECT_TIMEOUT_MS, round(connect_timeout * 1000)
        ),
        "security.protocol": settings.security_protocol.value,
    }
    if settings.security_protocol in (
        KafkaSecurityProtocol.SASL_PLAINTEXT,
        KafkaSecurityProtocol.SASL_SSL,
    ):
        config["sasl.mechanism"] = settings.sasl_mechanism.value
        config["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl.password"] = settings.sasl_password.get_secret_value()
    optional = {
        "ssl.ca.location": settings.ssl_cafile,
        "ssl.certificate.location": settings.ssl_certfile,
        "ssl.key.location": settings.ssl_keyfile,
    }
    config.update({key: str(path) for key, path in optional.items() if path is not None})
    if settings.ssl_key_password is not None:
        config["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    return config


class _Delivery:
    """One batch's delivery reports; its future resolves once every record has one.

    Called by librdkafka on the delivery thread (and on the event loop for
    records that never reached librdkafka's queue), hence the lock.
    """

    __slots__ = ("failed", "first_error", "future", "lock", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = count
        self.failed = 0
        self.first_error: KafkaError | str | None = None
        self.lock = threading.Lock()

    def __call__(self, error: KafkaError | None, _message: Message | None) -> None:
        self.settle(1, error)

    def settle(self, count: int, error: KafkaError | str | None) -> None:
        with self.lock:
            if error is not None:
                self.failed += count
                if self.first_error is None:
                    self.first_error = error
            self.pending -= count
            done = self.pending == 0
        if done:
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():  # not cancelled by write_batch's timeout
            self.future.set_result(None)


class KafkaStore:
    """EventStore producing to a Kafka topic; see the module docstring."""

    def __init__(
        self, settings: KafkaStoreSettings, *, connect_timeout: float, operation_timeout: float
    ) -> None:
        self._settings = settings
        self._topic = settings.topic
        self._connect_timeout = connect_timeout
        self._operation_timeout = operation_timeout
        self._config = producer_config(
            settings, connect_timeout=connect_timeout, operation_timeout=operation_timeout
        )
        self._producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._polling = threading.Event()
        # A fatal producer error (librdkafka's idempotence state is broken): the
        # producer is replaced before the next write.
        self._fatal: KafkaError | None = None
        self._replacing = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, worker_count: int) -> KafkaStore:
        return cls(
            settings.kafka,
            connect_timeout=settings.connect_timeout,
            operation_timeout=settings.operation_timeout,
        )

    @property
    def name(self) -> str:
        return "kafka"

    @property
    def config(self) -> dict[str, Any]:
        """The producer's librdkafka configuration (secrets included)."""
        return dict(self._config)

    def _where(self) -> str:
        return f"kafka store at {self._settings.bootstrap_servers}"

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback, on the delivery thread."""
        if error.fatal():
            self._fatal = error
            logger.error("kafka producer failed fatally", extra={"error": error.str()})
        elif error.code() in (
            KafkaError._AUTHENTICATION,
            KafkaError._SSL,
        ):
            logger.warning("kafka: cannot authenticate", extra={"error": error.str()})
        else:
            logger.info("kafka client error", extra={"error": error.str()})

    def _start_producer(self) -> None:
        try:
            producer = Producer({**self._config, "error_cb": self._on_error, "logger": logger})
        except (KafkaException, ValueError, TypeError) as error:
            raise StoreError(f"{self._where()}: bad client configuration: {error}") from error
        self._producer = producer
        self._fatal = None
        self._polling.set()
        self._poller = threading.Thread(
            target=self._serve_deliveries, args=(producer,), name="kafka-delivery", daemon=True
        )
        self._poller.start()

    def _serve_deliveries(self, producer: Producer) -> None:
        while self._polling.is_set():
            producer.poll(_POLL_INTERVAL_S)

    async def open(self) -> None:
        if self._producer is None:
            self._start_producer()
        try:
            await self.ping()
        except StoreError:
            await self.close()
            raise

    async def write_batch(self, batch: EventBatch) -> WriteResult:
        if self._producer is None:
            raise StoreError("kafka store: not open")
        if self._fatal is not None:
            await self._replace_producer()
        producer = self._producer
        if producer is None:
            raise StoreError("kafka store: not open")
        count = batch.count
        if not count:
            return WriteResult(written=0, duplicates=0)
        started = time.monotonic()
        deadline = started + self._operation_timeout
        delivery = _Delivery(asyncio.get_running_loop(), count)
        topic = self._topic
        produce = producer.produce
        lines = batch.lines()
        ids = batch.event_ids
        index = 0
        while index < count:
            try:
                # produce() only queues the record in librdkafka (it copies it).
                while index < count:
                    produce(topic, lines[index], ids[index].encode(), on_delivery=delivery)
                    index += 1
            except BufferError:
                # librdkafka's local queue is full: wait for deliveries to make room.
                if time.monotonic() >= deadline:
                    delivery.settle(count - index, "the producer's local queue stayed full")
                    break
                await asyncio.sleep(_QUEUE_FULL_WAIT_S)
            except KafkaException as error:  # refused at once (e.g. record too large)
                delivery.settle(1, error.args[0] if error.args else str(error))
                index += 1
        try:
            await asyncio.wait_for(delivery.future, max(0.0, deadline - time.monotonic()))
        except TimeoutError as error:
            with delivery.lock:
                unacknowledged = delivery.pending
            raise StoreError(
                f"{self._where()}: {unacknowledged} of {count} records to {topic!r} not "
                f"acknowledged within {self._operation_timeout}s"
            ) from error
        if delivery.failed:
            raise StoreError(
                f"{self._where()}: {delivery.failed} of {count} records to {topic!r} failed "
                f"(first: {_describe(delivery.first_error)})"
            )
        return WriteResult(written=count, duplicates=0)

    async def _replace_producer(self) -> None:
        """After a fatal error: a new producer (a new producer id) instead of the broken one."""
        async with self._replacing:
            fatal = self._fatal
            if fatal is None:
                return  # another writer replaced it
            logger.warning("replacing the kafka producer", extra={"error": fatal.str()})
            await self._stop_producer(flush=False)
            self._start_producer()

    async def ping(self) -> None:
        producer = self._producer
        if producer is None:
            raise StoreError("kafka store: not open")
        topic = self._topic
        try:
            # A metadata request for the topic: answers within connect_timeout or
            # the store counts as down. (The timeout bounds librdkafka's wait; the
            # outer one bounds the thread hand-off too.)
            async with asyncio.timeout(self._connect_timeout + 1.0):
                metadata = await asyncio.to_thread(
                    producer.list_topics, topic, self._connect_timeout
                )
        except TimeoutError as error:
            raise StoreError(
                f"{self._where()}: no metadata within {self._connect_timeout}s"
            ) from error
        except KafkaException as error:
            raise StoreError(f"{self._where()}: {_describe(error.args[0])}") from error
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            reason = _describe(found.error) if found is not None else "not in the metadata"
            raise StoreError(
                f"{self._where()}: topic {topic!r}: {reason} (create the topic, or let the "
                "brokers create it: auto.create.topics.enable)"
            )
        leaderless = sorted(p.id for p in found.partitions.values() if p.leader < 0)
        if not found.partitions or leaderless:
            raise StoreError(
                f"{self._where()}: topic {topic!r}: partitions without a leader: {leaderless}"
            )
        if self._fatal is not None:
            raise StoreError(f"{self._where()}: producer failed: {self._fatal.str()}")

    async def _stop_producer(self, *, flush: bool) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = 0
        if flush:
            # Bounded: records the broker does not take within operation_timeout
            # are failed by librdkafka (their batches raised already).
            left = await asyncio.to_thread(producer.flush, self._operation_timeout)
        self._polling.clear()
        poller, self._poller = self._poller, None
        if poller is not None:
            await asyncio.to_thread(poller.join)
        if not flush or left:
            # Fail what is still queued now, rather than in close() (which waits).
            await asyncio.to_thread(producer.purge)
            await asyncio.to_thread(producer.poll, 0)  # their reports, to their batches
        await asyncio.to_thread(producer.close)
        if left:
            logger.warning(
                "kafka store closed with records not acknowledged (their batches failed)",
                extra={"records": left},
            )

    async def close(self) -> None:
        await self._stop_producer(flush=True)


def _describe(error: object) -> str:
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)
