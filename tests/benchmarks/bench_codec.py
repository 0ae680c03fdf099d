"""CPU per event of the codec: the native pass against the Python reference.

    .venv/bin/python tests/benchmarks/bench_codec.py [--seconds S]

Batches of 100 and 1000 valid events (server ids, and client ids), each
decoded, checked, given ids and answered by each codec, on one core
(process CPU time). Rows:

  python            the reference: protobuf decode, the rules, the stored forms
                    as dicts, the response (today's path up to the pipeline)
  python + lines    the same and its JSON Lines block (orjson), which the
                    native pass always makes
  native + dicts    the native pass as wired today: block, response, and the
                    stored forms as dicts for the pipeline
  native            the native pass alone (block and response, no dicts)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from aep.events.codec import Codec, RequestKind
from aep.events.codec.native import NativeCodec
from aep.events.codec.reference import ReferenceCodec
from aep.events.schema import format_epoch
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from aep.settings import ValidationSettings


def batch(count: int, client_ids: bool) -> bytes:
    now = time.time()
    events = []
    for n in range(count):
        event = pb.AdEvent(
            event_id=f"client-{n:08d}" if client_ids else "",
            user_id=f"user-{n % 977}",
            ad_id=f"ad-{n % 131}",
            event_type=pb.EventType.ValueType(1 + n % 3),
            campaign_id="campaign-7",
            placement_id="slot-top",
            price_micros=1250 if n % 4 == 0 else 0,
            currency="USD" if n % 4 == 0 else "",
            attributes={"country": "DE", "device": "mobile"} if n % 2 else {},
        )
        event.timestamp.FromNanoseconds(int((now - 1) * 1e9))
        events.append(event)
    return pb.SendAdEventBatchRequest(events=events).SerializeToString()


def per_event_us(run: Callable[[], object], events: int, seconds: float) -> float:
    run()
    rounds = 0
    started = time.process_time()
    while time.process_time() - started < seconds:
        run()
        rounds += 1
    return (time.process_time() - started) / (rounds * events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU time per measurement")
    args = parser.parse_args()
    validation = ValidationSettings()
    codecs: dict[str, tuple[Codec, bool]] = {
        "python": (ReferenceCodec(validation, 1000), False),
        "python + lines": (ReferenceCodec(validation, 1000), True),
        "native + dicts": (NativeCodec(validation, 1000), False),
        "native": (NativeCodec(validation, 1000, records=False), False),
    }
    print(f"{'batch':>6} {'ids':>7}  " + "  ".join(f"{name:>15}" for name in codecs) + "  ratio")
    for count in (100, 1000):
        for client_ids in (False, True):
            raw = batch(count, client_ids)
            figures = []
            for codec, with_lines in codecs.values():

                def run(
                    codec: Codec = codec, with_lines: bool = with_lines, raw: bytes = raw
                ) -> object:
                    now = time.time()
                    decoded = codec.decode(RequestKind.BATCH, raw, now, format_epoch(now))
                    assert decoded.verdicts.rejected == []
                    decoded.response(1)
                    return decoded.block() if with_lines else decoded

                figures.append(per_event_us(run, count, args.seconds))
            today = figures[0] / figures[2]
            whole = figures[1] / figures[3]
            print(
                f"{count:>6} {'client' if client_ids else 'server':>7}  "
                + "  ".join(f"{figure:>12.2f} us" for figure in figures)
                + f"  python/native+dicts {today:.1f}x, python+lines/native {whole:.1f}x"
            )


if __name__ == "__main__":
    main()
