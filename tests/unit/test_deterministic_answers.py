"""The same request gets the same answer in every process (upb's map order is random per process).

A rejection names the smallest bad attribute key, and a stored form holds its
attributes in key order, whichever process (and codec) reads the request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from aep.events.codec import RequestKind, native_codec_problem
from aep.proto.adevents.v1 import ad_events_pb2 as pb

_CODECS = ["python", "native"]
_PROCESSES = 4
# Many keys, several of them bad (too long): which one a reason names, and the
# order a stored form lists them in, would differ between processes.
_BAD_KEYS = [f"{letter}{'x' * 80}" for letter in "qmzbk"]
_GOOD_KEYS = [f"{letter}{n}" for letter in "ywcfa" for n in range(4)]

_PROGRAM = """
import json, sys, time
from aep.events.codec import CodecChoice, RequestKind, create_codec
from aep.settings import ValidationSettings
codec = create_codec(CodecChoice(sys.argv[1]), ValidationSettings(max_attributes=64), 1000)
now = time.time()
answers = []
for raw in sys.stdin.buffer.read().split(b"--next--"):
    decoded = codec.decode(RequestKind.BATCH, raw, now, "received")
    answers.append({
        "reasons": [reason for _, _, reason in decoded.verdicts.rejected],
        "stored": [list(record["attributes"]) for record in decoded.block().records()],
        "lines": decoded.block().lines.decode(),
    })
print(json.dumps(answers))
"""


def _requests() -> bytes:
    now = time.time()
    bad = pb.AdEvent(user_id="u", ad_id="a", event_type=pb.EVENT_TYPE_CLICK)
    bad.timestamp.FromNanoseconds(int(now * 1e9))
    bad.attributes.update(dict.fromkeys(_BAD_KEYS + _GOOD_KEYS, "v"))
    good = pb.AdEvent(event_id="e1", user_id="u", ad_id="a", event_type=pb.EVENT_TYPE_CLICK)
    good.timestamp.FromNanoseconds(int(now * 1e9))
    good.attributes.update({key: str(n) for n, key in enumerate(_GOOD_KEYS)})
    return b"--next--".join(
        pb.SendAdEventBatchRequest(events=[event]).SerializeToString() for event in (bad, good)
    )


@pytest.mark.parametrize("codec", _CODECS)
def test_every_process_names_the_smallest_bad_key_and_stores_keys_in_order(codec: str) -> None:
    if codec == "native" and native_codec_problem() is not None:
        pytest.skip(f"the native codec is not built: {native_codec_problem()}")
    requests = _requests()
    answers = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _PROGRAM, codec],
                input=requests,
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
        )
        for _ in range(_PROCESSES)
    ]
    named = [answer[0]["reasons"] for answer in answers]
    orders = [answer[1]["stored"] for answer in answers]
    distinct_orders = len(set(map(str, orders)))
    print(f"{codec}: reasons per process {named}; distinct stored key orders: {distinct_orders}")
    smallest = min(_BAD_KEYS)
    for reasons in named:
        assert reasons == [f"attributes: key {smallest[:32]!r} must have 1 to 64 characters"], (
            reasons
        )
    for order in orders:
        assert order == [sorted(_GOOD_KEYS)]
    assert len({answer[1]["lines"] for answer in answers}) == 1


def test_request_kind_numbers_are_the_native_passes() -> None:
    assert [kind.value for kind in RequestKind] == [0, 1, 2]
