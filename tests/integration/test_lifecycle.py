"""Application.run in-process: the shutdown order, and what a failed start-up closes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from aep.app import EXIT_OK, EXIT_STARTUP_FAILED, Application
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc
from aep.settings import load_settings
from tests.helpers.support import free_port, valid_event

pytestmark = pytest.mark.integration


def app_for(tmp_path: Path, **env: str) -> Application:
    environ = {
        "AEP_SERVER_HOST": "127.0.0.1",
        "AEP_SERVER_PORT": str(free_port()),
        "AEP_METRICS_HOST": "127.0.0.1",
        "AEP_METRICS_PORT": str(free_port()),
        "AEP_DATABASE_FILE_DIR": str(tmp_path / "events"),
        "AEP_DEAD_LETTER_DIR": str(tmp_path / "dead-letter"),
        "AEP_WAL_DIR": str(tmp_path / "wal"),
        "AEP_SHUTDOWN_GRACE_PERIOD": "10s",
        **env,
    }
    return Application(load_settings(environ=environ))


def record_steps(app: Application) -> list[str]:
    """Each shutdown step appends its name when it runs (then does its work)."""
    steps: list[str] = []

    def async_step(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def step(*args: Any, **kwargs: Any) -> Any:
            steps.append(name)
            return await method(*args, **kwargs)

        return step

    def sync_step(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            steps.append(name)
            return method(*args, **kwargs)

        return step

    assert app.wal is not None
    app.serving.begin_shutdown = async_step("health NOT_SERVING", app.serving.begin_shutdown)  # type: ignore[method-assign]
    app._stop_rpcs = async_step("stop RPCs", app._stop_rpcs)  # type: ignore[method-assign]
    app.pipeline.drain = async_step("drain", app.pipeline.drain)  # type: ignore[method-assign]
    app.wal.close = async_step("close WAL", app.wal.close)  # type: ignore[method-assign]
    app.stores[0].close = async_step("close store", app.stores[0].close)  # type: ignore[method-assign]
    app.http.close = async_step("close HTTP", app.http.close)  # type: ignore[method-assign]
    app.telemetry.shutdown = sync_step("telemetry", app.telemetry.shutdown)  # type: ignore[method-assign]
    return steps


async def test_the_shutdown_runs_in_order_after_serving(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    steps = record_steps(app)
    stop = asyncio.Event()
    run = asyncio.create_task(app.run(stop))
    for _ in range(200):
        if app.serving.serving:
            break
        assert not run.done(), "the app stopped during start-up"
        await asyncio.sleep(0.05)
    address = f"127.0.0.1:{app.settings.server.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        api = pb_grpc.AdEventServiceStub(channel)
        request = pb.SendAdEventBatchRequest(
            events=[valid_event() for _ in range(5)], ack_mode=pb.ACK_MODE_DURABLE
        )
        response = await api.SendAdEventBatch(request, timeout=5)
        assert response.accepted_count == 5
    assert steps == []
    stop.set()
    assert await asyncio.wait_for(run, 30) == EXIT_OK
    assert steps == [
        "health NOT_SERVING",
        "stop RPCs",
        "drain",
        "close WAL",
        "close store",
        "close HTTP",
        "telemetry",
    ]
    assert app.ledger.events_written == 5


async def test_a_log_that_cannot_be_opened_closes_only_what_was_opened(tmp_path: Path) -> None:
    (tmp_path / "wal").write_text("a file where the write-ahead log folder should be")
    app = app_for(tmp_path)
    steps = record_steps(app)
    assert await asyncio.wait_for(app.run(asyncio.Event()), 30) == EXIT_STARTUP_FAILED
    assert steps == ["close store", "close HTTP", "telemetry"]


async def test_a_busy_port_drains_and_closes_in_order(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        app = app_for(tmp_path, AEP_METRICS_PORT=str(busy))
        steps = record_steps(app)
        assert await asyncio.wait_for(app.run(asyncio.Event()), 30) == EXIT_STARTUP_FAILED
    assert steps == ["drain", "close WAL", "close store", "close HTTP", "telemetry"]
