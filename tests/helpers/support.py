"""Helpers shared by the tests: free ports, a real server process, event builders."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from aep.events.block import EventBatch, EventBlock
from aep.events.event_types import VALID_EVENT_TYPE_NAMES
from aep.events.schema import KEY_FIELD, STORED_FIELDS, EventRecord, FieldKind
from aep.events.validation import EventValidator
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.storage.file import read_records


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> None:
    """Skip a test whose tool is missing here; in CI (which installs it) fail it."""
    if in_ci():
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


def require_tool(name: str, install_hint: str) -> str:
    """The path of a command a test needs (see skip_or_fail)."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed ({install_hint})")
        raise AssertionError("unreachable")
    return path


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process was given before.

    The kernel may hand the same port to two probes in a row (the first probe
    is closed); a server given it for gRPC and for metrics would refuse to start.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def now_timestamp(offset_s: float = 0.0) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() + offset_s) * 1e9))
    return stamp


def valid_event(**overrides: object) -> pb.AdEvent:
    fields: dict[str, object] = {
        "user_id": "user-1",
        "ad_id": "ad-1",
        "event_type": pb.EVENT_TYPE_CLICK,
        "timestamp": now_timestamp(),
    }
    fields.update(overrides)
    return pb.AdEvent(**fields)  # type: ignore[arg-type]


# A value of each kind of stored field that differs from the kind's default, so
# a field a codec or a store drops shows in a round trip. A new kind fails here
# (KeyError) until it has a sample.
_SAMPLE_OF_KIND: dict[FieldKind, Callable[[str, int], object]] = {
    FieldKind.ID: lambda name, position: f"{name}-{position}",
    FieldKind.TEXT: lambda name, position: "EUR",  # also a valid currency
    FieldKind.EVENT_TYPE: lambda name, position: VALID_EVENT_TYPE_NAMES[
        max(VALID_EVENT_TYPE_NAMES)
    ],
    FieldKind.TIMESTAMP: lambda name, position: f"2026-11-26T19:00:00.{position:06d}Z",
    FieldKind.INT64: lambda name, position: 1_250_000 + position,
    FieldKind.STRING_MAP: lambda name, position: {"os": "ios", name: str(position)},
}


def full_stored_record(event_id: str = "full") -> EventRecord:
    """A stored-form record with every field of the schema set, none to its default."""
    record: EventRecord = {
        field.name: _SAMPLE_OF_KIND[field.kind](field.name, position)
        for position, field in enumerate(STORED_FIELDS, start=1)
    }
    record[KEY_FIELD] = event_id
    return record


def stored_events(directory: Path) -> list[dict[str, object]]:
    """Every complete event of every store file (.jsonl or .binpb) under directory."""
    events: list[dict[str, object]] = []
    for path in sorted(directory.glob("events-*")):
        events.extend(read_records(path))
    return events


@dataclass
class ServerProcess:
    """`python -m aep` in a subprocess, on free loopback ports."""

    data_dir: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def events_dir(self) -> Path:
        return self.data_dir / "events"

    @property
    def dead_letter_dir(self) -> Path:
        return self.data_dir / "dead-letter"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AEP_")}
        env.update(
            {
                "AEP_SERVER_HOST": "127.0.0.1",
                "AEP_SERVER_PORT": str(self.grpc_port),
                "AEP_METRICS_HOST": "127.0.0.1",
                "AEP_METRICS_PORT": str(self.metrics_port),
                "AEP_DATABASE_FILE_DIR": str(self.events_dir),
                "AEP_DEAD_LETTER_DIR": str(self.dead_letter_dir),
                "AEP_LOGGING_FORMAT": "json",
                "AEP_SHUTDOWN_GRACE_PERIOD": "20s",
            }
        )
        env.update(self.env_overrides)
        return env

    def start(self, wait: bool = True) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{self.grpc_port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aep"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log()}")
                with contextlib.suppress(grpc.RpcError):
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"server not SERVING within {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        try:
            return self.wait_exit()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@contextlib.contextmanager
def running_server(data_dir: Path, **env: str) -> Iterator[ServerProcess]:
    server = ServerProcess(data_dir, env).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def accept_one(
    validator: EventValidator,
    event: pb.AdEvent,
    now: float,
    received_at: str,
    new_id: Callable[[], str],
) -> EventRecord | str:
    """One event through the hot path: its stored form (server id if empty), else the reason."""
    verdicts = validator.accept_all(
        (event,), now, received_at, lambda count: [new_id() for _ in range(count)], []
    )
    if verdicts.records:
        return verdicts.records[0]
    return verdicts.rejected[0][2]


def stored_forms(events: list[pb.AdEvent], received_at: str) -> list[dict[str, object]]:
    """The records the server stores for these valid events (each with its event_id set)."""
    from aep.settings import ValidationSettings

    validator = EventValidator(ValidationSettings())
    records = []
    for event in events:
        record = accept_one(
            validator, event, event.timestamp.seconds, received_at, lambda: "unused"
        )
        assert isinstance(record, dict), record
        records.append(record)
    return records


@dataclass(frozen=True)
class Scrape:
    """One GET /metrics, parsed: sample name -> [(labels, value)]."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def values(self, name: str, label: str) -> dict[str, float]:
        return {labels[label]: value for labels, value in self.samples.get(name, [])}

    def conservation(self) -> dict[str, float]:
        """The terms of aep.pipeline.ledger' equation, read from exported metrics."""
        return {
            "received": self.total("events_received_total"),
            "replayed": self.total("events_replayed_total"),
            "processed": self.total("events_processed_total"),
            "rejected": self.total("events_rejected_total"),
            "duplicates": self.total("events_duplicate_total"),
            "dead_lettered": self.total("events_dead_lettered_total"),
            "lost": self.total("events_lost_total"),
            "in_flight": self.total("pipeline_pending_events"),
        }

    def drift(self) -> float:
        terms = self.conservation()
        return terms.pop("received") + terms.pop("replayed") - sum(terms.values())


def scrape(metrics_port: int, timeout_s: float = 5.0) -> Scrape:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(samples)


def batch_of(records: Sequence[EventRecord]) -> EventBatch:
    """The batch a store write takes, of these stored forms (encoded by the reference)."""
    return EventBatch([EventBlock.of_records(records)])


def block_of(records: Sequence[EventRecord]) -> EventBlock:
    """The block the codec would offer of these stored forms (the reference's bytes)."""
    return EventBlock.of_records(records)
