"""Start-up failures a newcomer meets first: the error names the key to change."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers.support import ServerProcess

pytestmark = pytest.mark.integration

EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_FAILED = 3


def exit_code_at_start(server: ServerProcess) -> int:
    """Start a server that is expected to give up at start-up; its exit code (killed if not)."""
    server.start(wait=False)
    try:
        return server.wait_exit(timeout_s=30)
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.parametrize("busy", ["metrics", "grpc"])
def test_a_busy_port_names_its_key_and_address(tmp_path: Path, busy: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        if busy == "metrics":
            server = ServerProcess(tmp_path, metrics_port=port)
            key = "metrics.port"
        else:
            server = ServerProcess(tmp_path, grpc_port=port)
            key = "server.port"
        exit_code = exit_code_at_start(server)
    log = server.log()
    error_lines = [line for line in log.splitlines() if "cannot listen" in line]
    print(f"busy {busy} port {port}: exit {exit_code}: {error_lines}")
    assert exit_code == EXIT_STARTUP_FAILED
    assert error_lines, log
    assert f"{key}: cannot listen on 127.0.0.1:{port}" in error_lines[0]


def test_an_unknown_store_type_names_the_key_and_the_known_types(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, env_overrides={"AEP_DATABASE_TYPE": "kafkaa"})
    exit_code = exit_code_at_start(server)
    log = server.log()
    print(f"AEP_DATABASE_TYPE=kafkaa: exit {exit_code}: {log.strip()}")
    assert exit_code == EXIT_CONFIG_ERROR
    assert "database.type" in log and "AEP_DATABASE_TYPE" in log
    for known in ("file", "redis", "mongodb"):
        assert f"'{known}'" in log
