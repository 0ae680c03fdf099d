"""ad-event-processor with one part of its work taken out, to measure what the rest costs.

Started by bench_ingest.py (unless --no-ablations), on the JSON Lines file store
with default settings, like `ours`. Not a way to run the service: what it
acknowledges is either not stored at all (`shell`) or stored with made-up
content (`no-validation`).

  shell          the whole application (settings, metrics, health, reflection,
                 store monitor, pipeline, the codec's pass over the request
                 bytes, the RPC duration histogram), but AdEventService's
                 handlers answer every request as accepted without queueing or
                 storing anything. With the native codec that pass already
                 checks and encodes the events (server.codec=python: decodes).
  no-validation  everything real (ids, per-event results, queue, batches,
                 dedupe, JSON Lines encoding, write, fsync) except validation
                 and building the stored form: the first request of each size
                 is validated, later ones reuse copies of its stored forms with
                 fresh server ids. What the path after validation costs.
                 Runs the Python codec (its accept_all is what is replaced).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aep import cli
from aep.events.codec import DecodedRequest
from aep.events.schema import EventRecord
from aep.events.validation import EventValidator, Verdicts
from aep.ingest.servicer import AdEventServicer, Context
from aep.proto.adevents.v1 import ad_events_pb2 as pb


def take_out_everything() -> None:
    """AdEventService answers every decoded request as accepted, and does nothing else."""

    async def send(
        self: AdEventServicer, request: DecodedRequest, wire_bytes: int
    ) -> pb.SendAdEventResponse:
        return pb.SendAdEventResponse(event_id="ablated", status=pb.EVENT_STATUS_ACCEPTED)

    async def send_batch(self: AdEventServicer, request: DecodedRequest, wire_bytes: int) -> bytes:
        response = pb.SendAdEventBatchResponse(accepted_count=request.count)
        return response.SerializeToString()

    async def stream(
        self: AdEventServicer, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        async for raw in requests:
            chunk = pb.StreamAdEventsRequest.FromString(raw)
            ack = pb.StreamAdEventsResponse(
                sequence=chunk.sequence, accepted_count=len(chunk.events)
            )
            yield ack.SerializeToString()

    patches: dict[str, Any] = {
        "SendAdEvent": send,
        "SendAdEventBatch": send_batch,
        "StreamAdEvents": stream,
    }
    for name, handler in patches.items():
        setattr(AdEventServicer, name, handler)


def take_out_validation() -> None:
    """accept_all reuses copies of the stored forms of the first request of each size.

    accept_all is the Python codec's: this ablation runs with server.codec=python.
    """
    os.environ["AEP_SERVER_CODEC"] = "python"
    validated: dict[int, list[EventRecord]] = {}
    real_accept_all = EventValidator.accept_all

    def accept_all(
        self: EventValidator,
        events: Sequence[pb.AdEvent],
        now: float,
        received_at: str,
        new_ids: Callable[[int], list[str]],
        by_type: list[int],
    ) -> Verdicts:
        count = len(events)
        if count not in validated:
            first = real_accept_all(self, events, now, received_at, new_ids, by_type)
            if first.rejected:
                return first
            validated[count] = first.records
        records = [record.copy() for record in validated[count]]
        for record, event_id in zip(records, new_ids(count), strict=True):
            record["event_id"] = event_id
        return Verdicts(records, [])

    EventValidator.accept_all = accept_all  # type: ignore[method-assign]


ABLATIONS = {"shell": take_out_everything, "no-validation": take_out_validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ablation", choices=sorted(ABLATIONS))
    args = parser.parse_args()
    ABLATIONS[args.ablation]()
    cli.main([])


if __name__ == "__main__":
    main()
