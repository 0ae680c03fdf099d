"""One serving state, reported by gRPC health (grpc.health.v1) and HTTP /health."""

from __future__ import annotations

from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

OVERALL = ""


class ServingState:
    """Owns the grpc.health.v1 servicer; SERVING only between ready and shutdown."""

    def __init__(self, service_names: Iterable[str]) -> None:
        # grpc_health exports its asyncio servicer as `health.aio` at run time only.
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._names = (OVERALL, *service_names)
        self._serving = False
        self._shutting_down = False

    @property
    def serving(self) -> bool:
        return self._serving

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def set_serving(self, serving: bool) -> None:
        if self._shutting_down:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)

    async def begin_shutdown(self) -> None:
        """NOT_SERVING for good; later set_serving calls are ignored."""
        await self.set_serving(False)
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()
