"""Serving state from store health: NOT_SERVING while a store is down.

Each store's lane records the outcome of every batch write in its `health`.
While writes flow, that is all the monitor needs; while the store is failing
or nothing was written lately, it pings the store every
`health.store_check_interval`, so a dead store is noticed without traffic and a
recovered one is noticed although Kubernetes stopped sending traffic to a
NOT_SERVING pod. The store counts as down once it has failed for
`health.store_down_after` without a success in between; the first success
makes it SERVING again. A ping only vouches for what pings fail on: after a
failed write, only a successful write counts (a full disk still passes the file
store's ping). With several stores each is checked on its own; a store whose
lane can spill to disk and whose spill still has room does not make the
server NOT_SERVING: its events wait on disk, the other stores are written.
Shutdown wins: ServingState ignores set_serving once
begin_shutdown was called.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aep.observability.health import ServingState
from aep.pipeline.core import Pipeline
from aep.pipeline.lane import Lane
from aep.settings import HealthSettings

logger = logging.getLogger(__name__)


class StoreMonitor:
    def __init__(
        self,
        pipeline: Pipeline,
        serving: ServingState,
        settings: HealthSettings,
        *,
        ping_timeout: float,
    ) -> None:
        self._pipeline = pipeline
        self._serving = serving
        self._down_after = settings.store_down_after
        self._interval = settings.store_check_interval
        self._ping_timeout = ping_timeout

    async def run(self) -> None:
        """Check forever; cancel the task to stop."""
        while True:
            await self.check()
            await asyncio.sleep(self._interval)

    async def check(self) -> None:
        """Ping where needed, then set the serving state from the stores' states."""
        now = time.monotonic()
        for lane in self._pipeline.lanes:
            state = lane.health.state
            writes_flow = (
                state.healthy
                and state.last_write_at is not None
                and now - state.last_write_at < self._interval
            )
            if not writes_flow:
                await self._ping(lane)
        serve = self.should_serve(time.monotonic())
        if serve != self._serving.serving and not self._serving.shutting_down:
            if serve:
                logger.info("store reachable again: SERVING")
            else:
                logger.error(
                    "store down: NOT_SERVING",
                    extra={"down_after_s": self._down_after, "detail": self.down_detail()},
                )
            await self._serving.set_serving(serve)

    async def _ping(self, lane: Lane) -> None:
        health = lane.health
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancel that arrives as the ping completes, and then the task
            # would outlive its cancellation at shutdown.
            async with asyncio.timeout(self._ping_timeout):
                await lane.store.ping()
        except TimeoutError:
            health.failed(TimeoutError(f"ping: no answer within {self._ping_timeout}s"), ping=True)
        except Exception as error:  # any failure means "down"; the monitor must keep going
            health.failed(error, ping=True)
        else:
            health.succeeded(ping=True)

    def lane_down(self, lane: Lane, now: float) -> bool:
        """Failing for health.store_down_after, and not spilling within bounds."""
        state = lane.health.state
        if state.healthy or state.failing_since is None:
            return False
        if now - state.failing_since < self._down_after:
            return False
        return lane.spill is None or lane.spill_full

    def should_serve(self, now: float) -> bool:
        pipeline = self._pipeline
        if pipeline.broken:
            return False
        return not any(self.lane_down(lane, now) for lane in pipeline.lanes)

    def down_detail(self) -> str:
        now = time.monotonic()
        return "; ".join(
            f"{lane.name}: {lane.health.state.detail}"
            for lane in self._pipeline.lanes
            if self.lane_down(lane, now)
        )
