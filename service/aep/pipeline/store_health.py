"""What the latest store calls said: the writers' writes and the monitor's pings.

aep.observability.store_monitor turns it into the serving state; telemetry
exports it as store_up, HealthCheck as store_healthy / store_detail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StoreState:
    """Outcome of the latest store call (a batch write, or a ping by the monitor)."""

    healthy: bool = True
    detail: str = "ok"
    # The failure came from a write: a ping that succeeds (the file store's only
    # checks the directory) does not clear it, only a successful write does.
    write_failed: bool = False
    failing_since: float | None = None  # time.monotonic() of the first failure in a row
    last_write_at: float | None = None  # time.monotonic() of the latest successful write


class StoreHealth:
    def __init__(self, broken: Callable[[], bool]) -> None:
        self.state = StoreState()
        # True once a pipeline task died of a bug: its detail then stays.
        self._broken = broken

    def failed(self, error: Exception, *, ping: bool = False) -> None:
        """A write (or, with ping, the monitor's ping) failed."""
        state = self.state
        if state.healthy:
            logger.warning("store failing", extra={"error": str(error)})
            state.failing_since = time.monotonic()
        state.healthy = False
        state.write_failed = state.write_failed or not ping
        state.detail = f"{type(error).__name__}: {error}"

    def succeeded(self, *, ping: bool = False) -> None:
        """A write (or, with ping, the monitor's ping) succeeded.

        A ping clears only failures of pings: after a failed write, the store
        counts as failing until a write succeeds (a full disk passes a ping).
        """
        state = self.state
        if self._broken():
            return  # keep the crash in store_detail: the pipeline writes nothing more
        if ping and state.write_failed:
            return
        if not state.healthy:
            logger.info("store writes succeed again")
        state.healthy = True
        state.write_failed = False
        state.detail = "ok"
        state.failing_since = None

    def crashed(self, detail: str) -> None:
        """A pipeline task died of a bug: nothing more will be written."""
        self.state.healthy = False
        self.state.detail = detail
