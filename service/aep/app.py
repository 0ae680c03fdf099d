"""Builds the service from Settings and owns start-up and the ordered shutdown.

Start-up: with database.startup=fail_fast the store is opened (connected and
pinged) before anything listens, and a store that cannot be reached ends the
process with exit code 3. With `wait` the ports open at once, NOT_SERVING, and
the store is retried until it answers; events sent meanwhile are queued up to
the queue bound. Once the store is open, the StoreMonitor keeps health in step
with it.

Shutdown order: health NOT_SERVING -> stop taking RPCs and let in-flight ones
finish -> drain the pipeline -> close the store -> close HTTP -> telemetry.
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
from aep.pipeline.core import AdmissionError, Pipeline
from aep.pipeline.dead_letters import DeadLetterQueue
from aep.pipeline.ledger import IngestStats
from aep.pipeline.wal import REPLAY_BYTES_PER_EVENT, Segment, WriteAheadLog, read_segment
from aep.settings import Settings, StartupPolicy
from aep.storage import StoreError, create_store

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DRAIN_INCOMPLETE = 1
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 130

_MAX_OPEN_RETRY_DELAY_S = 5.0


class Application:
    def __init__(self, settings: Settings, *, span_exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self.stats = IngestStats()
        self.store = create_store(settings.database, worker_count=settings.batch.worker_pool_size)
        # span_exporter: for tests; by default tracing follows OTEL_EXPORTER_OTLP_*.
        self.telemetry = Telemetry(
            settings.metrics, self.stats, self.store.name, span_exporter=span_exporter
        )
        self.wal = (
            WriteAheadLog(settings.wal.dir, settings.wal.segment_bytes)
            if settings.wal.dir is not None
            else None
        )
        self._replay_task: asyncio.Task[None] | None = None
        self.pipeline = Pipeline(
            self.store,
            self.stats,
            DeadLetterQueue(settings.dead_letter.dir),
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
            self.stats,
            self.serving,
            server=settings.server,
            default_ack=settings.ack.mode,
            store_type=self.store.name,
            observe_rpc=self.telemetry.observe_rpc,
            wal=self.wal,
        )
        self.telemetry.watch(self.pipeline)
        self.http = HttpEndpoints(
            self.serving,
            self.telemetry.render,
            max_connections=settings.metrics.max_connections,
            idle_timeout=settings.metrics.idle_timeout,
        )
        self.monitor = StoreMonitor(
            self.store,
            self.pipeline,
            self.serving,
            settings.health,
            ping_timeout=settings.database.connect_timeout,
        )

    async def run(self, stop: asyncio.Event) -> int:
        settings = self.settings
        store_open = False
        if settings.database.startup is StartupPolicy.FAIL_FAST:
            try:
                await self.store.open()
            except StoreError as error:
                logger.error(
                    "cannot open the store; exiting (database.startup=wait would keep retrying)",
                    extra={"error": str(error)},
                )
                self.telemetry.shutdown()
                return EXIT_STARTUP_FAILED
            store_open = True
        leftovers: list[Segment] = []
        if self.wal is not None:
            try:
                leftovers = await asyncio.to_thread(self.wal.open)
            except OSError as error:
                logger.error("cannot open the write-ahead log", extra={"error": str(error)})
                await self.store.close()
                self.telemetry.shutdown()
                return EXIT_STARTUP_FAILED
            self.stats.wal_segments_quarantined = self.wal.quarantined
            self.stats.wal_damaged_records = self.wal.damaged_records
            self.stats.wal_skipped_bytes = self.wal.skipped_bytes
            self.stats.wal_backlog_events = sum(s.replay_events for s in leftovers)
            self.wal.start()
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
            await self.pipeline.drain(settings.shutdown.grace_period)
            await self.store.close()
            self.telemetry.shutdown()
            return EXIT_STARTUP_FAILED
        # grpc's health servicer answers SERVING for "" until told otherwise.
        await self.serving.set_serving(False)
        if not store_open:
            not_yet = StoreError("not connected yet (database.startup=wait)")
            self.pipeline.note_store_failure(not_yet)
        tune_garbage_collector()
        await grpc_server.start()
        listening = {
            "grpc_port": grpc_port,
            "metrics_port": http_port,
            "store": self.store.name,
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
        await stop.wait()
        return await self._shutdown(grpc_server, monitor_task)

    def _start_pipeline(self, leftovers: list[Segment]) -> None:
        """Start writing; what the write-ahead log held from earlier runs goes first."""
        self.pipeline.start()
        if leftovers:
            self._replay_task = asyncio.create_task(self._replay(leftovers), name="wal-replay")

    async def _open_store_when_reachable(self, stop: asyncio.Event) -> bool:
        """database.startup=wait: retry opening until it works (True) or stop is set."""
        interval = self.settings.health.store_check_interval
        delay = interval
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                await self.store.open()
            except StoreError as error:
                self.pipeline.note_store_failure(error)
                log = logger.warning if attempt == 1 else logger.debug
                log("store not reachable yet; retrying", extra={"error": str(error)})
            else:
                self.pipeline.note_store_success()
                logger.info("store reachable", extra={"attempts": attempt})
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, max(interval, _MAX_OPEN_RETRY_DELAY_S))
        return False

    async def _shutdown(
        self, grpc_server: grpc.aio.Server, monitor_task: asyncio.Task[None] | None
    ) -> int:
        grace = self.settings.shutdown.grace_period
        deadline = time.monotonic() + grace
        logger.info("shutting down", extra={"grace_period_s": grace})
        await self.serving.begin_shutdown()
        if monitor_task is not None:
            monitor_task.cancel()
            # Bounded: whatever the monitor does, it must not hold up the drain
            # (a crash in it is in the task's exception, logged by asyncio).
            await asyncio.wait({monitor_task}, timeout=1.0)
        # In-flight RPCs get half the budget; committed-mode RPCs finish only
        # when their events are written, which the still-running pipeline does.
        await grpc_server.stop(grace / 2)
        if self._replay_task is not None and not self._replay_task.done():
            # What was not replayed stays in its segment for the next start.
            self._replay_task.cancel()
        drained = await self.pipeline.drain(max(0.0, deadline - time.monotonic()))
        # Events only in the log (replay interrupted or not started) are not drained.
        wal_backlog = self.stats.wal_backlog_events
        drained = drained and wal_backlog == 0
        if self.wal is not None:
            await self.wal.close()
        try:
            await self.store.close()
        except Exception:
            logger.exception("closing the store failed")
            drained = False
        await self.http.close()
        stats = self.stats
        logger.info(
            "stopped",
            extra={
                "received": stats.received,
                "rejected": stats.rejected_invalid
                + stats.rejected_overload
                + stats.rejected_unavailable,
                "written": stats.written,
                "duplicates": stats.duplicates,
                "dead_lettered": stats.dead_lettered,
                "lost": stats.lost,
                "in_flight": self.pipeline.pending_events,
                "wal_backlog_events": wal_backlog,
                "drained": drained,
            },
        )
        self.telemetry.shutdown()
        return EXIT_OK if drained and stats.lost == 0 else EXIT_DRAIN_INCOMPLETE

    async def _replay(self, leftovers: list[Segment]) -> None:
        """Re-submit what the write-ahead log holds from earlier runs, throttled.

        Stores are idempotent by event_id, so events written before the crash
        come back as duplicates. A segment is held while its records are being
        submitted, so that it is deleted only once all of them are stored.
        """
        assert self.wal is not None
        pipeline = self.pipeline
        stats = self.stats
        fill_limit = int(pipeline.max_events * self.settings.wal.replay_max_queue_fill)
        logger.info("replaying the write-ahead log", extra={"segments": len(leftovers)})
        events = 0
        for segment in leftovers:
            # One segment in memory at a time: bounded by wal.segment_bytes.
            try:
                submissions, _ = await asyncio.to_thread(read_segment, segment.path)
            except OSError as error:
                # It stays in the log (and in the backlog) for the next start.
                logger.error(
                    "cannot read a write-ahead log segment to replay it",
                    extra={"segment": str(segment.path), "error": str(error)},
                )
                continue
            self.wal.pin(segment)  # the hold
            backlog = segment.replay_events  # of this segment, in stats.wal_backlog_events
            for records in submissions:
                nbytes = REPLAY_BYTES_PER_EVENT * len(records)
                while pipeline.pending_events + len(records) > max(fill_limit, len(records)):
                    await pipeline.wait_for_room(len(records), nbytes, 0.1)
                    await asyncio.sleep(0.01)
                self.wal.pin(segment)
                try:
                    pipeline.submit(records, nbytes, wal_segment=segment)
                except AdmissionError:
                    self.wal.committed(segment)  # undo the pin; the hold keeps the segment
                    return
                submitted = min(backlog, len(records))
                backlog -= submitted
                stats.wal_backlog_events -= submitted
                stats.replayed += len(records)
                events += len(records)
            stats.wal_backlog_events -= backlog
            self.wal.committed(segment)  # release the hold
        logger.info("write-ahead log replayed", extra={"events": events})


def tune_garbage_collector() -> None:
    """Keep the cyclic GC from pausing the event loop under load.

    Under load up to queue.max_events pending records are alive; CPython's
    collections walked them together with every object made at start-up and
    showed up as 30-60 ms pauses in the p99 (measured with tests/benchmarks).
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
