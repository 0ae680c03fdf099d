"""TLS, mTLS and API keys on the real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from tests.helpers.support import ServerProcess, running_server, valid_event

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
        f"- name: sdk\n  key: {INGEST_KEY}\n  roles: [ingest, read]\n"
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
        "aep.tools.client",
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
    keys.write_text("- name: short\n  key: tooshort\n  roles: [ingest]\n")
    server = ServerProcess(tmp_path, {"AEP_AUTH_API_KEYS_FILE": str(keys)})
    server.start(wait=False)
    assert server.wait_exit(30) == 3
    assert "16+ characters" in server.log()
    assert "tooshort" not in server.log()


NO_ROLES_KEY = "no-roles-key-0123456789abcdef"
STREAM_KEY = "stream-key-0123456789abcdef"


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A key with an empty role list, and an ingest key limited to 1 RPC/s."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        f"- name: nothing\n  key: {NO_ROLES_KEY}\n  roles: []\n"
        f"- name: streamer\n  key: {STREAM_KEY}\n  roles: [ingest]\n  rate_limit_rps: 1\n"
        f"- name: sdk\n  key: {INGEST_KEY}\n  roles: [ingest, read]\n"
    )
    with running_server(tmp_path / "server", AEP_AUTH_API_KEYS_FILE=str(keys)) as server:
        yield server


def test_an_empty_role_list_grants_nothing(strict_server: ServerProcess) -> None:
    metadata = (("x-api-key", NO_ROLES_KEY),)
    with grpc.insecure_channel(strict_server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        send = _send(channel, metadata)
        try:
            api.HealthCheck(pb.HealthCheckRequest(), timeout=5, metadata=metadata)
            health = grpc.StatusCode.OK
        except grpc.RpcError as error:
            health = error.code()
    print(f"roles: [] -> SendAdEvent {send.name}, HealthCheck {health.name}")
    assert send == grpc.StatusCode.PERMISSION_DENIED
    assert health == grpc.StatusCode.PERMISSION_DENIED


def test_a_key_without_roles_fails_start_up(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- name: forgot-roles\n  key: {INGEST_KEY}\n")
    server = ServerProcess(tmp_path, {"AEP_AUTH_API_KEYS_FILE": str(keys)})
    server.start(wait=False)
    try:
        exit_code = server.wait_exit(30)
    except subprocess.TimeoutExpired:
        exit_code = None
    finally:
        server.stop()
    print(f"key without roles: exit code {exit_code}")
    assert exit_code == 3, server.log()
    assert "roles" in server.log() and "forgot-roles" in server.log()
    assert INGEST_KEY not in server.log()


def _call_code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def test_binary_metadata_that_is_not_utf8_is_refused_cleanly(
    strict_server: ServerProcess,
) -> None:
    with grpc.insecure_channel(strict_server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        request = pb.SendAdEventRequest(event=valid_event())
        key_bin = _call_code(
            lambda: api.SendAdEvent(
                request, timeout=5, metadata=(("x-api-key-bin", b"\xff\xfe\x00key"),)
            )
        )
        # A binary header the service does not read, before a valid key.
        unrelated = _call_code(
            lambda: api.SendAdEvent(
                request,
                timeout=5,
                metadata=(("trace-bin", b"\xff\xfe"), ("x-api-key", INGEST_KEY)),
            )
        )
    assert strict_server.stop() == 0
    log = strict_server.log()
    print(
        f"x-api-key-bin not UTF-8 -> {key_bin}; unrelated trace-bin -> {unrelated}; "
        f"tracebacks in the log: {log.count('Traceback')}"
    )
    assert key_bin[0] == grpc.StatusCode.UNAUTHENTICATED, key_bin
    assert "x-api-key-bin" in key_bin[1] and "UTF-8" in key_bin[1]
    assert unrelated[0] == grpc.StatusCode.OK, unrelated
    assert "Traceback" not in log


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay of a status, if it carries one."""
    from google.rpc import error_details_pb2, status_pb2

    metadata: Any = error.trailing_metadata() or ()  # (key, value) pairs at run time
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def test_a_rate_limit_refusal_carries_retry_info(strict_server: ServerProcess) -> None:
    metadata = (("x-api-key", STREAM_KEY),)
    with grpc.insecure_channel(strict_server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        request = pb.SendAdEventRequest(event=valid_event())
        api.SendAdEvent(request, timeout=5, metadata=metadata)  # the burst of 1
        with pytest.raises(grpc.RpcError) as refused:
            api.SendAdEvent(request, timeout=5, metadata=metadata)
    delay = _retry_delay(refused.value)
    print(f"over the rate limit: {refused.value.code().name}, RetryInfo delay {delay}")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert delay is not None and 0 < delay <= 1.0


def test_stream_chunks_count_against_the_rate_limit(strict_server: ServerProcess) -> None:
    """1 RPC/s: a stream of 10 chunks sent at once is not 1 RPC; the chunks past the
    limit end the stream with RESOURCE_EXHAUSTED and RetryInfo, after the earlier acks."""
    chunks = [
        pb.StreamAdEventsRequest(
            sequence=number + 1, events=[valid_event(event_id=f"s{number}-{i}") for i in range(5)]
        )
        for number in range(10)
    ]
    acks: list[int] = []
    with grpc.insecure_channel(strict_server.address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        stream = api.StreamAdEvents(iter(chunks), timeout=10, metadata=(("x-api-key", STREAM_KEY),))
        try:
            for ack in stream:
                acks.append(ack.sequence)
            code, delay = grpc.StatusCode.OK, None
        except grpc.RpcError as error:
            code, delay = error.code(), _retry_delay(error)
    print(f"10 chunks at 1 RPC/s: acks {acks}, then {code.name}, RetryInfo delay {delay}")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= len(acks) < 10
    assert acks == list(range(1, len(acks) + 1))
    assert delay is not None and delay > 0
