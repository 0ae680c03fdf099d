"""`ad-event-client`: smoke and load client. Uses only the public proto.

Modes (the reference design's):
  single   send --events events one RPC each, one after another
  batch    send --events events in SendAdEventBatch calls of --batch events
  load     --concurrent callers send --events events in total (batches of
           --batch; --batch 1 uses SendAdEvent) and report events/s and latency
  stream   --concurrent StreamAdEvents streams send --events events in chunks
           of --batch; latency is per chunk, from send to ack
  health   call HealthCheck and grpc.health.v1; exit 0 only when SERVING

Exit codes: 0 every event accepted; 1 some event rejected or an RPC failed;
2 the server could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

import grpc
import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aep.events.event_types import VALID_EVENT_TYPES
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.proto.adevents.v1 import ad_events_pb2_grpc as pb_grpc

ResponseT = TypeVar("ResponseT")
# Where gRPC carries a google.rpc.Status with details (RetryInfo here).
STATUS_DETAILS_KEY = "grpc-status-details-bin"

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_UNREACHABLE = 2

_ACK_MODES = {
    "server": pb.ACK_MODE_UNSPECIFIED,
    "accepted": pb.ACK_MODE_ACCEPTED,
    "durable": pb.ACK_MODE_DURABLE,
    "committed": pb.ACK_MODE_COMMITTED,
}


def make_event(rng: random.Random, now: Timestamp) -> pb.AdEvent:
    event_type = rng.choice(VALID_EVENT_TYPES)
    event = pb.AdEvent(
        user_id=f"user-{rng.randrange(1_000_000)}",
        ad_id=f"ad-{rng.randrange(10_000)}",
        event_type=event_type,
        timestamp=now,
        campaign_id=f"campaign-{rng.randrange(100)}",
        publisher_id=f"publisher-{rng.randrange(500)}",
    )
    if event_type == pb.EVENT_TYPE_CONVERSION:
        event.price_micros = rng.randrange(1, 50_000_000)
        event.currency = "USD"
    return event


@dataclass
class Outcome:
    accepted: int = 0
    rejected: int = 0
    failed_rpcs: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)

    def note_results(self, results: Iterable[pb.EventResult], keep_ids: bool) -> None:
        """Count a batch's or a chunk's per-event results."""
        for result in results:
            if result.status == pb.EVENT_STATUS_ACCEPTED:
                self.accepted += 1
                if keep_ids:
                    self.event_ids.append(result.event_id)
            else:
                self.rejected += 1
                key = f"rejected: {result.reason}"
                self.errors[key] = self.errors.get(key, 0) + 1

    def failure(self, error: grpc.aio.AioRpcError, events: int) -> None:
        self.failed_rpcs += 1
        self.rejected += events
        key = f"{error.code().name}: {error.details()}"
        self.errors[key] = self.errors.get(key, 0) + 1


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo delay of a RESOURCE_EXHAUSTED error, if the server sent one."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    # grpc-stubs types metadata entries oddly; at run time they are (key, value) pairs.
    metadata = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


class Progress:
    """A bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self._total = total
        self._stream = stream
        self._enabled = enabled
        self._tty = stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def update(self, sent: int, accepted: int) -> None:
        """`sent` events have had their answer, `accepted` of them were accepted."""
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last < (0.1 if self._tty else 5.0) and sent < self._total:
            return
        self._last = now
        rate = accepted / max(now - self._started, 1e-9)
        counts = f"{sent}/{self._total} events sent, {accepted} accepted, {rate:,.0f} accepted/s"
        if self._tty:
            width = 30
            filled = width * sent // max(self._total, 1)
            bar = "#" * filled + "." * (width - filled)
            self._stream.write(f"\r[{bar}] {counts}")
            if sent >= self._total:
                self._stream.write("\n")
        else:
            self._stream.write(f"progress: {counts}\n")
        self._stream.flush()


class LoadClient:
    def __init__(
        self, channel: grpc.aio.Channel, ack_mode: int, timeout: float, seed: int, max_retries: int
    ) -> None:
        self._max_retries = max_retries
        self._stub = pb_grpc.AdEventServiceStub(channel)
        self._ack_mode = pb.AckMode.ValueType(ack_mode)
        self._timeout = timeout
        self._rng = random.Random(seed)

    def _now(self) -> Timestamp:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        return stamp

    async def _call_with_retries(
        self, call: Callable[[], Awaitable[ResponseT]], outcome: Outcome
    ) -> ResponseT:
        """Retry RESOURCE_EXHAUSTED after the server's RetryInfo delay (nothing was accepted)."""
        for attempt in range(self._max_retries + 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                delay = retry_delay(error)
                if delay is None or attempt == self._max_retries:
                    raise
                outcome.retries += 1
                await asyncio.sleep(delay * self._rng.uniform(1.0, 1.5))
        raise AssertionError("unreachable")

    async def send(self, count: int, outcome: Outcome, keep_ids: bool) -> None:
        """One RPC carrying `count` events (SendAdEvent when count == 1)."""
        now = self._now()
        started = time.perf_counter()
        try:
            if count == 1:
                request = pb.SendAdEventRequest(
                    event=make_event(self._rng, now), ack_mode=self._ack_mode
                )
                single = await self._call_with_retries(
                    lambda: self._stub.SendAdEvent(request, timeout=self._timeout), outcome
                )
                outcome.accepted += 1
                if keep_ids:
                    outcome.event_ids.append(single.event_id)
            else:
                events = [make_event(self._rng, now) for _ in range(count)]
                batch_request = pb.SendAdEventBatchRequest(events=events, ack_mode=self._ack_mode)
                batch = await self._call_with_retries(
                    lambda: self._stub.SendAdEventBatch(batch_request, timeout=self._timeout),
                    outcome,
                )
                outcome.note_results(batch.results, keep_ids)
        except grpc.aio.AioRpcError as error:
            outcome.failure(error, count)
        outcome.latencies.append(time.perf_counter() - started)

    async def stream(
        self, chunks: list[int], outcome: Outcome, keep_ids: bool, on_answer: Callable[[], None]
    ) -> None:
        """One StreamAdEvents call sending a chunk per entry of `chunks` (its size).

        on_answer is called after each ack, and once more if the stream fails.
        """
        call = self._stub.StreamAdEvents(None)  # requests are written with call.write
        sent_at: dict[int, float] = {}

        async def write_chunks() -> None:
            for sequence, count in enumerate(chunks, start=1):
                now = self._now()
                events = [make_event(self._rng, now) for _ in range(count)]
                sent_at[sequence] = time.perf_counter()
                await call.write(
                    pb.StreamAdEventsRequest(
                        sequence=sequence, events=events, ack_mode=self._ack_mode
                    )
                )
            await call.done_writing()

        writer = asyncio.create_task(write_chunks())
        acknowledged = 0
        try:
            async for ack in call:
                outcome.latencies.append(time.perf_counter() - sent_at.pop(ack.sequence))
                acknowledged += len(ack.results)
                outcome.note_results(ack.results, keep_ids)
                on_answer()
            await writer
        except grpc.aio.AioRpcError as error:
            writer.cancel()
            # Chunks without an ack were not accepted.
            outcome.failure(error, sum(chunks) - acknowledged)
            on_answer()


async def _run_streams(
    client: LoadClient, total: int, chunk: int, streams: int, progress: Progress, keep_ids: bool
) -> tuple[Outcome, float]:
    outcome = Outcome()
    sizes = [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])
    shares = [sizes[index::streams] for index in range(streams)]

    def on_answer() -> None:
        progress.update(outcome.accepted + outcome.rejected, outcome.accepted)

    started = time.perf_counter()
    await asyncio.gather(
        *(client.stream(share, outcome, keep_ids, on_answer) for share in shares if share)
    )
    return outcome, time.perf_counter() - started


async def _run_sends(
    client: LoadClient, total: int, batch: int, concurrent: int, progress: Progress, keep_ids: bool
) -> tuple[Outcome, float]:
    outcome = Outcome()
    remaining = total

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            count = min(batch, remaining)
            remaining -= count
            await client.send(count, outcome, keep_ids)
            progress.update(outcome.accepted + outcome.rejected, outcome.accepted)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrent)))
    return outcome, time.perf_counter() - started


async def _health(channel: grpc.aio.Channel, rpc_timeout_s: float, out: TextIO) -> int:
    stub = pb_grpc.AdEventServiceStub(channel)
    health_stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.HealthCheck(pb.HealthCheckRequest(), timeout=rpc_timeout_s)
        standard = await health_stub.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=rpc_timeout_s
        )
    except grpc.aio.AioRpcError as error:
        print(f"health check failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return EXIT_UNREACHABLE if error.code() == grpc.StatusCode.UNAVAILABLE else EXIT_REJECTED
    status = pb.HealthCheckResponse.ServingStatus.Name(response.status)
    standard_status = health_pb2.HealthCheckResponse.ServingStatus.Name(standard.status)
    out.write(
        f"status={status} grpc_health={standard_status} "
        f"store={response.store_type} store_healthy={response.store_healthy} "
        f"pending_events={response.pending_events} pending_bytes={response.pending_bytes} "
        f"version={response.version}\n"
    )
    serving = response.status == pb.HealthCheckResponse.SERVING_STATUS_SERVING
    return EXIT_OK if serving else EXIT_REJECTED


def _report(
    args: argparse.Namespace, outcome: Outcome, elapsed: float, out: TextIO
) -> dict[str, object]:
    latencies = sorted(outcome.latencies)
    summary: dict[str, object] = {
        "mode": args.mode,
        "events": args.events,
        "batch": args.batch,
        "concurrent": args.concurrent,
        "accepted": outcome.accepted,
        "rejected": outcome.rejected,
        "failed_rpcs": outcome.failed_rpcs,
        "retries": outcome.retries,
        "rpcs": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(outcome.accepted / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 3),
            "p95": round(percentile(latencies, 0.95) * 1000, 3),
            "p99": round(percentile(latencies, 0.99) * 1000, 3),
            "max": round((latencies[-1] if latencies else 0.0) * 1000, 3),
        },
        "errors": outcome.errors,
    }
    if args.json:
        out.write(orjson.dumps(summary).decode() + "\n")
    else:
        latency = summary["latency_ms"]
        assert isinstance(latency, dict)
        out.write(
            f"{args.mode}: {outcome.accepted} accepted, {outcome.rejected} rejected, "
            f"{outcome.failed_rpcs} failed RPCs ({outcome.retries} retries) in {elapsed:.2f}s "
            f"= {summary['events_per_s']:,} events/s\n"
            f"latency per {'chunk' if args.mode == 'stream' else 'RPC'} (ms): "
            f"p50 {latency['p50']} p95 {latency['p95']} "
            f"p99 {latency['p99']} max {latency['max']}\n"
        )
        for error, count in sorted(outcome.errors.items(), key=lambda item: -item[1])[:10]:
            out.write(f"  {count} x {error}\n")
    return summary


if TYPE_CHECKING:  # generic only in the type stubs
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _StreamInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _StreamInterceptor = grpc.aio.StreamStreamClientInterceptor


class _ApiKeyMetadata(_UnaryInterceptor, _StreamInterceptor):
    """Adds `x-api-key` to every call (call credentials would need TLS)."""

    def __init__(self, api_key: str) -> None:
        self._entry = ("x-api-key", api_key)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def open_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    # grpc-stubs leave the interceptor parameter's type open on purpose.
    interceptors: Any = [_ApiKeyMetadata(args.api_key)] if args.api_key else None
    if args.tls_ca is None:
        return grpc.aio.insecure_channel(args.server, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.aio.secure_channel(
        args.server, credentials, options=options, interceptors=interceptors
    )


async def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    async with open_channel(args) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        except TimeoutError:
            print(
                f"ad-event-client: cannot reach {args.server} within {args.connect_timeout}s",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        if args.mode == "health":
            return await _health(channel, args.timeout, out)
        client = LoadClient(
            channel, _ACK_MODES[args.ack_mode], args.timeout, args.seed, args.max_retries
        )
        keep_ids = args.ids_out is not None
        progress = Progress(args.events, sys.stderr, enabled=not args.quiet)
        if args.mode == "stream":
            outcome, elapsed = await _run_streams(
                client, args.events, args.batch, args.concurrent, progress, keep_ids
            )
        else:
            batch = 1 if args.mode == "single" else args.batch
            concurrent = args.concurrent if args.mode == "load" else 1
            outcome, elapsed = await _run_sends(
                client, args.events, batch, concurrent, progress, keep_ids
            )
    _report(args, outcome, elapsed, out)
    if args.ids_out is not None:
        args.ids_out.write_text("".join(f"{event_id}\n" for event_id in outcome.event_ids))
    if (
        outcome.failed_rpcs
        and all(error.startswith("UNAVAILABLE") for error in outcome.errors)
        and outcome.accepted == 0
    ):
        return EXIT_UNREACHABLE
    return EXIT_OK if outcome.rejected == 0 and outcome.failed_rpcs == 0 else EXIT_REJECTED


def _positive(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds above 0")
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default after its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="ad-event-client",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    result.add_argument("--server", default="localhost:8080", help="HOST:PORT")
    result.add_argument(
        "--mode",
        choices=("single", "batch", "load", "stream", "health"),
        default="single",
        help="see the modes above",
    )
    result.add_argument("--events", type=_positive, default=100, help="events to send in all")
    result.add_argument(
        "--batch", type=_positive, default=100, help="events per batch RPC or stream chunk"
    )
    result.add_argument(
        "--concurrent",
        type=_positive,
        default=10,
        help="RPCs in flight (load mode) or parallel streams (stream mode)",
    )
    result.add_argument(
        "--ack-mode",
        choices=tuple(_ACK_MODES),
        default="server",
        help="guarantee to ask for; server: the server's ack.mode; durable needs the "
        "server's wal.dir",
    )
    result.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="deadline of each RPC (single, batch, load, health), seconds",
    )
    result.add_argument(
        "--connect-timeout", type=_seconds, default=5.0, help="seconds to wait for the server"
    )
    result.add_argument(
        "--max-retries",
        type=_non_negative,
        default=5,
        help="retries of an RPC refused with RESOURCE_EXHAUSTED + RetryInfo",
    )
    result.add_argument("--api-key", help="sent as x-api-key metadata (or $AEP_API_KEY)")
    result.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA to verify the server: TLS")
    result.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (mTLS)")
    result.add_argument("--tls-key", type=Path, metavar="FILE", help="client private key (mTLS)")
    result.add_argument("--seed", type=int, default=1, help="random seed for generated events")
    result.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    result.add_argument("--quiet", action="store_true", help="no progress output")
    result.add_argument(
        "--ids-out", type=Path, metavar="FILE", help="write acknowledged event_ids, one per line"
    )
    return result


def _check_files(args: argparse.Namespace) -> str | None:
    """What is wrong with the file options, found before anything is sent."""
    if (args.tls_cert is None) != (args.tls_key is None):
        return "argument --tls-cert/--tls-key: give both, or neither"
    if args.tls_cert is not None and args.tls_ca is None:
        return "argument --tls-cert: TLS needs --tls-ca (the CA that signed the server)"
    tls_files = (
        ("--tls-ca", args.tls_ca),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    )
    for option, path in tls_files:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            return f"argument {option}: cannot read the file {path}"
    if args.ids_out is not None:
        try:
            args.ids_out.write_text("")  # the ids are written after the run
        except OSError as error:
            return f"argument --ids-out: cannot write {args.ids_out}: {error.strerror}"
    return None


def main(argv: list[str] | None = None) -> None:
    cli = parser()
    args = cli.parse_args(argv)
    args.api_key = args.api_key or os.environ.get("AEP_API_KEY")
    problem = _check_files(args)
    if problem is not None:
        cli.error(problem)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
