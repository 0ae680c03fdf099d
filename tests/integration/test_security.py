"""TLS, mTLS and API keys on the real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ServerProcess, running_server, valid_event

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

INGEST_KEY = "ingest-key-0123456789abcdef"
READ_KEY = "read-only-key-0123456789abcdef"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=folder,
    )
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extension in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *extension,
            cwd=folder,
        )
    return folder


def _credentials(pki: Path, client_cert: bool) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_cert else None,
    )


def _send(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        pb_grpc.AdEventServiceStub(channel).SendAdEvent(
            pb.SendAdEventRequest(event=valid_event()), timeout=5, metadata=metadata
        )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _health_env(pki: Path, mutual: bool) -> dict[str, str]:
    env = {
        "AEP_TLS_CERT_FILE": str(pki / "server.pem"),
        "AEP_TLS_KEY_FILE": str(pki / "server.key"),
    }
    if mutual:
        env["AEP_TLS_CLIENT_CA_FILE"] = str(pki / "ca.pem")
    return env


class TlsServer(ServerProcess):
    def wait_serving(self, timeout_s: float = 20.0) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(self.log())
            if "serving" in self.log():
                return
            time.sleep(0.05)
        raise TimeoutError(self.log())


@pytest.fixture
def tls_server(tmp_path: Path, pki: Path) -> Iterator[ServerProcess]:
    server = TlsServer(tmp_path, _health_env(pki, mutual=False)).start()
    yield server
    server.stop()


def test_tls_serves_secure_channels_only(tls_server: ServerProcess, pki: Path) -> None:
    with grpc.secure_channel(tls_server.address, _credentials(pki, client_cert=False)) as channel:
        assert _send(channel) == grpc.StatusCode.OK
    with grpc.insecure_channel(tls_server.address) as channel:
        assert _send(channel) == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(tmp_path: Path, pki: Path) -> None:
    server = TlsServer(tmp_path, _health_env(pki, mutual=True)).start()
    try:
        with grpc.secure_channel(server.address, _credentials(pki, client_cert=True)) as channel:
            assert _send(channel) == grpc.StatusCode.OK
        with grpc.secure_channel(server.address, _credentials(pki, client_cert=False)) as channel:
            assert _send(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[ServerProcess]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"- name: sdk\n  key: {INGEST_KEY}\n"
        f"- name: dashboard\n  key: {READ_KEY}\n  roles: [read]\n  rate_limit_rps: 1\n"
    )
    with running_server(tmp_path / "server", AEP_AUTH_API_KEYS_FILE=str(keys)) as server:
        yield server


def test_api_keys_authenticate_authorise_and_rate_limit(keyed_server: ServerProcess) -> None:
    with grpc.insecure_channel(keyed_server.address) as channel:
        assert _send(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert _send(channel, (("x-api-key", "wrong-key-0123456789"),)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert _send(channel, (("x-api-key", INGEST_KEY),)) == grpc.StatusCode.OK
        assert _send(channel, (("authorization", f"Bearer {INGEST_KEY}"),)) == grpc.StatusCode.OK
        assert _send(channel, (("x-api-key", READ_KEY),)) == grpc.StatusCode.PERMISSION_DENIED
        api = pb_grpc.AdEventServiceStub(channel)
        codes = []
        for _ in range(3):  # 1 RPC/s with a burst of 1
            try:
                api.HealthCheck(
                    pb.HealthCheckRequest(), timeout=5, metadata=(("x-api-key", READ_KEY),)
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        assert codes[0] == grpc.StatusCode.OK
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        # Probes and reflection stay open.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert keyed_server.stop() == 0
    log = keyed_server.log()
    assert INGEST_KEY not in log and READ_KEY not in log


def test_client_sends_the_api_key(keyed_server: ServerProcess) -> None:
    command = [
        sys.executable,
        "-m",
        "aep.client",
        "--quiet",
        "--server",
        keyed_server.address,
        "--mode",
        "batch",
        "--events",
        "20",
        "--batch",
        "10",
    ]
    without = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert without.returncode == 1
    assert "UNAUTHENTICATED" in without.stdout
    with_key = subprocess.run(
        [*command, "--api-key", INGEST_KEY], capture_output=True, text=True, timeout=60, check=False
    )
    assert with_key.returncode == 0, with_key.stdout


def test_a_bad_key_file_fails_start_up(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("- name: short\n  key: tooshort\n")
    server = ServerProcess(tmp_path, {"AEP_AUTH_API_KEYS_FILE": str(keys)})
    server.start(wait=False)
    assert server.wait_exit(30) == 3
    assert "16+ characters" in server.log()
    assert "tooshort" not in server.log()
