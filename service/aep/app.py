"""Builds the service from Settings and owns start-up and the ordered shutdown.

Start-up: with database.startup=fail_fast the store is opened (connected and
pinged) before anything listens, and a store that cannot be reached ends the
process with exit code 3. With `wait` the ports open at once, NOT_SERVING, and
the store is retried until it answers; events sent meanwhile are queued up to
the queue bound. Once the store is open, the StoreMonitor keeps health in step
with it.

Shutdown order: health NOT_SERVING -> stop taking RPCs and let in-flight ones
finish -> drain the pipeline -> close the write-ahead log -> close the store
-> close HTTP -> telemetry: one exit stack, each step registered when its
resource is opened, so a failed start-up closes exactly what was opened.
All of it within shutdown.grace_period; signal handlers only set an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time

import grpc
from opentelemetry.sdk.trace.export import SpanExporter

from aep.events.codec import CodecUnavailableError, create_codec
from aep.ingest.security import SecurityConfigError, interceptors, server_credentials
from aep.ingest.server import AD_EVENT_SERVICE_NAME, BindError, build_server
from aep.ingest.servicer import AdEventServicer
from aep.observability.health import ServingState
from aep.observability.http_endpoints import HttpEndpoints
from aep.observability.store_monitor import StoreMonitor
from aep.observability.telemetry import Telemetry
from aep.pipeline import recovery
from aep.pipeline.backoff import backoff_delay
from aep.pipeline.core import Outlet, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import Ledger
from aep.pipeline.spill import Spill
from aep.pipeline.wal import Segment, WriteAheadLog
from aep.settings import Settings, StartupPolicy
from aep.storage import EventStore, StoreError, create_stores

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DRAIN_INCOMPLETE = 1
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 130

_MAX_OPEN_RETRY_DELAY_S = 5.0


class Application:
    def __init__(self, settings: Settings, *, span_exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.ledger = Ledger()
        self.stores = create_stores(settings.database, worker_count=settings.batch.worker_pool_size)
        self.store_names = [store.name for store in self.stores]
        # span_exporter: for tests; by default tracing follows OTEL_EXPORTER_OTLP_*.
        self.telemetry = Telemetry(
            settings.metrics, self.ledger, self.store_names, span_exporter=span_exporter
        )
        self.wal = (
            WriteAheadLog(settings.wal.dir, settings.wal.segment_bytes)
            if settings.wal.dir is not None
            else None
        )
        self._replay_task: asyncio.Task[None] | None = None
        # Shutdown state: set once the server listens, when the shutdown
        # begins, and by the drain and the store's close.
        self._started = False
        self._deadline: float | None = None
        self._drained = True
        self._opened: list[EventStore] = []  # the stores open() succeeded for
        self.pipeline = Pipeline(
            [self._outlet(store) for store in self.stores],
            self.ledger,
            batch=settings.batch,
            queue=settings.queue,
            retry=settings.retry,
            observer=self.telemetry.observer,
            wal=self.wal,
        )
        self.serving = ServingState([AD_EVENT_SERVICE_NAME])
        self.servicer = AdEventServicer(
            self.pipeline,
            create_codec(
                settings.server.codec, settings.validation, settings.server.max_batch_events
            ),
            self.ledger,
            self.serving,
            server=settings.server,
            default_ack=settings.ack.mode,
            store_type=",".join(self.store_names),
            observe_rpc=self.telemetry.observe_rpc,
        )
        self.telemetry.watch(self.pipeline)
        self.http = HttpEndpoints(
            self.serving,
            self.telemetry.render,
            max_connections=settings.metrics.max_connections,
            idle_timeout=settings.metrics.idle_timeout,
        )
        self.monitor = StoreMonitor(
            self.pipeline,
            self.serving,
            settings.health,
            ping_timeout=settings.database.connect_timeout,
        )

    def _outlet(self, store: EventStore) -> Outlet:
        """A store's dead-letter folder and spill: `<dir>/<store type>/` with several stores."""
        settings = self.settings
        several = len(self.stores) > 1
        dead_letter_dir = settings.dead_letter.dir
        if several:
            dead_letter_dir = dead_letter_dir / store.name
        spill = None
        if settings.spills:
            spill = Spill(
                settings.spill.dir / store.name,
                max_bytes=settings.spill.max_bytes,
                segment_bytes=settings.spill.segment_bytes,
            )
        return Outlet(store, DeadLetterQueue(dead_letter_dir), spill)

    async def run(self, stop: asyncio.Event) -> int:
        """Start, serve until `stop` is set, shut down in order; the exit code."""
        async with contextlib.AsyncExitStack() as resources:
            # Unwound in reverse order of registration, which is the shutdown
            # order: health NOT_SERVING -> stop taking RPCs -> drain -> close the
            # write-ahead log -> close the store -> HTTP -> telemetry.
            resources.callback(self.telemetry.shutdown)
            resources.callback(self._report_stopped)
            # Registered before the store is opened although it listens later:
            # /metrics and /health keep answering through the drain.
            resources.push_async_callback(self.http.close)
            if not await self._start(stop, resources):
                return EXIT_STARTUP_FAILED
            await stop.wait()
        lost = self.ledger.events_lost
        return EXIT_OK if self._drained and lost == 0 else EXIT_DRAIN_INCOMPLETE

    async def _start(self, stop: asyncio.Event, resources: contextlib.AsyncExitStack) -> bool:
        """Open and start everything, registering each closing step; False: start-up failed."""
        settings = self.settings
        store_open = False
        resources.push_async_callback(self._close_stores)
        if settings.database.startup is StartupPolicy.FAIL_FAST:
            for lane in self.pipeline.lanes:
                try:
                    await lane.store.open()
                except StoreError as error:
                    logger.error(
                        "cannot open the store; exiting (database.startup=wait would keep "
                        "retrying)",
                        extra={"store": lane.name, "error": str(error)},
                    )
                    return False
                self._opened.append(lane.store)
            store_open = True
        try:
            await self.pipeline.open_spills()
        except OSError as error:
            logger.error("cannot open the spill", extra={"error": str(error)})
            return False
        leftovers: list[Segment] = []
        if self.wal is not None:
            try:
                leftovers = await recovery.open_log(self.wal, self.ledger)
            except OSError as error:
                logger.error("cannot open the write-ahead log", extra={"error": str(error)})
                return False
            self.wal.start()
            resources.push_async_callback(self.wal.close)
        resources.push_async_callback(self._drain)
        if store_open:
            self._start_pipeline(leftovers)
        try:
            grpc_server, grpc_port = build_server(
                settings.server,
                self.servicer,
                self.serving,
                credentials=server_credentials(settings.tls),
                # Tracing outermost: refused calls (auth) get their span too.
                interceptors=[
                    *self.telemetry.server_interceptors(AD_EVENT_SERVICE_NAME),
                    *interceptors(settings.auth),
                ],
            )
            metrics = settings.metrics
            try:
                http_port = await self.http.start(metrics.host, metrics.port)
            except OSError as error:
                address = f"{metrics.host}:{metrics.port}"
                # asyncio's message repeats the address; the errno's text does not.
                errno = error.errno if isinstance(error.errno, int) else 0
                reason = os.strerror(errno) if errno > 0 else error.strerror or str(error)
                raise BindError(f"metrics.port: cannot listen on {address}: {reason}") from error
        except (BindError, OSError, SecurityConfigError) as error:
            logger.error("cannot listen", extra={"error": str(error)})
            return False
        # grpc's health servicer answers SERVING for "" until told otherwise.
        await self.serving.set_serving(False)
        if not store_open:
            not_yet = StoreError("not connected yet (database.startup=wait)")
            for lane in self.pipeline.lanes:
                lane.health.failed(not_yet)
        tune_garbage_collector()
        await grpc_server.start()
        resources.push_async_callback(self._stop_rpcs, grpc_server)
        self._started = True
        listening = {
            "grpc_port": grpc_port,
            "metrics_port": http_port,
            "store": ",".join(self.store_names),
            "ack_mode": settings.ack.mode.value,
            "codec": self.servicer.codec_name,
            "pid": os.getpid(),
        }
        monitor_task: asyncio.Task[None] | None = None
        if not store_open:
            logger.info("listening, NOT_SERVING until the store answers", extra=listening)
            store_open = await self._open_store_when_reachable(stop)
            if store_open:
                self._start_pipeline(leftovers)
        if store_open:
            await self.serving.set_serving(True)
            logger.info("serving", extra=listening)
            monitor_task = asyncio.create_task(self.monitor.run(), name="store-monitor")
        resources.push_async_callback(self._begin_shutdown, monitor_task)
        return True

    def _start_pipeline(self, leftovers: list[Segment]) -> None:
        """Start writing; what the write-ahead log held from earlier runs goes first."""
        self.pipeline.start()
        if leftovers:
            assert self.wal is not None
            replay = recovery.replay(
                leftovers,
                pipeline=self.pipeline,
                wal=self.wal,
                ledger=self.ledger,
                max_queue_fill=self.settings.wal.replay_max_queue_fill,
            )
            self._replay_task = asyncio.create_task(replay, name="wal-replay")

    async def _open_store_when_reachable(self, stop: asyncio.Event) -> bool:
        """database.startup=wait: retry opening every store until all work (True) or stop is set."""
        interval = self.settings.health.store_check_interval
        attempt = 0
        while not stop.is_set():
            attempt += 1
            for lane in self.pipeline.lanes:
                if lane.store in self._opened:
                    continue
                try:
                    await lane.store.open()
                except StoreError as error:
                    lane.health.failed(error)
                    log = logger.warning if attempt == 1 else logger.debug
                    log(
                        "store not reachable yet; retrying",
                        extra={"store": lane.name, "error": str(error)},
                    )
                else:
                    self._opened.append(lane.store)
                    lane.health.succeeded()
                    logger.info("store reachable", extra={"store": lane.name, "attempts": attempt})
            if len(self._opened) == len(self.stores):
                return True
            delay = backoff_delay(
                attempt, interval, max(interval, _MAX_OPEN_RETRY_DELAY_S), jitter=False
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return False

    # -- the shutdown steps, run by run()'s exit stack in this order -----------------
    async def _begin_shutdown(self, monitor_task: asyncio.Task[None] | None) -> None:
        grace = self.settings.shutdown.grace_period
        self._deadline = time.monotonic() + grace
        logger.info("shutting down", extra={"grace_period_s": grace})
        await self.serving.begin_shutdown()
        if monitor_task is not None:
            monitor_task.cancel()
            # Bounded: whatever the monitor does, it must not hold up the drain
            # (a crash in it is in the task's exception, logged by asyncio).
            await asyncio.wait({monitor_task}, timeout=1.0)

    async def _stop_rpcs(self, grpc_server: grpc.aio.Server) -> None:
        # In-flight RPCs get half the budget; committed-mode RPCs finish only
        # when their events are written, which the still-running pipeline does.
        await grpc_server.stop(self.settings.shutdown.grace_period / 2)

    async def _drain(self) -> None:
        if self._replay_task is not None and not self._replay_task.done():
            # What was not replayed stays in its segment for the next start.
            self._replay_task.cancel()
        budget = self.settings.shutdown.grace_period
        if self._deadline is not None:
            budget = max(0.0, self._deadline - time.monotonic())
        drained = await self.pipeline.drain(budget)
        # Events only in the log (replay interrupted or not started) are not drained.
        self._drained = drained and self.ledger.wal_backlog_events == 0

    async def _close_stores(self) -> None:
        for store in self._opened:
            try:
                await store.close()
            except Exception:
                logger.exception("closing the store failed", extra={"store": store.name})
                self._drained = False

    def _report_stopped(self) -> None:
        if not self._started:
            return  # start-up failed: its error was logged
        ledger = self.ledger
        logger.info(
            "stopped",
            extra={
                "received": ledger.events_received,
                "rejected": ledger.events_rejected,
                "written": ledger.events_written,
                "duplicates": ledger.events_duplicate,
                "dead_lettered": ledger.events_dead_lettered,
                "lost": ledger.events_lost,
                "in_flight": self.pipeline.pending_events,
                "wal_backlog_events": ledger.wal_backlog_events,
                "drained": self._drained,
            },
        )


def tune_garbage_collector() -> None:
    """Keep the cyclic GC from pausing the event loop under load.

    Under load up to queue.max_events pending records are alive; CPython's
    collections walked them together with every object made at start-up, and
    those pauses set the tail latency (docs/performance.md).
    Start-up objects are moved out of the collector's reach (gc.freeze) and
    the young generation is collected less often; the code makes no cycles on
    the per-event path, so reference counting frees records as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT starts the graceful shutdown; a second one forces exit."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("second signal: exiting without draining", extra={"signal": signum})
            os._exit(EXIT_FORCED)
        logger.info("signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    try:
        application = Application(settings)
    except CodecUnavailableError as error:
        logger.error("cannot start", extra={"error": str(error)})
        return EXIT_STARTUP_FAILED
    return await application.run(stop)
