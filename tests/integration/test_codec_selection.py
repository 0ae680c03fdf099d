"""server.codec through real server processes: which codec runs, and that both answer alike.

The same batch (client ids, so nothing random) is sent to a server on each
codec: the response bytes, the stored lines and the rejection reasons are
the same, and the start-up log names the codec. Without the native build
(hidden by a sitecustomize that refuses to import it) `auto` runs python with
a warning and `native` refuses to start.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from aep.events.codec import native_codec_problem
from aep.proto.adevents.v1 import ad_events_pb2 as pb
from tests.helpers.support import ServerProcess, skip_or_fail, valid_event

pytestmark = pytest.mark.integration

EXIT_STARTUP_FAILED = 3
_BATCH_METHOD = "/{}/{}".format(
    pb.DESCRIPTOR.services_by_name["AdEventService"].full_name,
    pb.DESCRIPTOR.services_by_name["AdEventService"].methods_by_name["SendAdEventBatch"].name,
)
_HIDE_NATIVE = """
import sys
class _NoNative:
    def find_spec(self, name, path=None, target=None):
        if name == "aep.events.codec._native":
            raise ImportError("hidden by the test")
        return None
sys.meta_path.insert(0, _NoNative())
"""


def _serving_line(server: ServerProcess) -> dict[str, object]:
    lines = [json.loads(line) for line in server.log().splitlines() if '"serving"' in line]
    assert lines, server.log()
    line: dict[str, object] = lines[-1]
    return line


def _batch() -> bytes:
    bad_keys = {f"{letter}{'x' * 70}": "v" for letter in "qbz"}
    events = [
        valid_event(event_id=f"id-{n}", attributes={"z": "1", "a": "2", "m": '\x00"é'})
        for n in range(5)
    ]
    events.insert(2, valid_event(event_id="bad", attributes=bad_keys))
    events.append(pb.AdEvent(event_id="empty"))
    return pb.SendAdEventBatchRequest(events=events).SerializeToString()


def _send_raw(server: ServerProcess, raw: bytes) -> bytes:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(_BATCH_METHOD, None, None)
        answer: bytes = call(raw, timeout=10)
        return answer


def test_both_codecs_answer_and_store_alike(tmp_path: Path) -> None:
    if native_codec_problem() is not None:
        skip_or_fail(f"the native codec is not built: {native_codec_problem()}")
    raw = _batch()
    answers: dict[str, bytes] = {}
    stored: dict[str, list[bytes]] = {}
    for codec in ("python", "native"):
        server = ServerProcess(tmp_path / codec, {"AEP_SERVER_CODEC": codec}).start()
        try:
            assert _serving_line(server)["codec"] == codec
            answers[codec] = _send_raw(server, raw)
            with (
                grpc.insecure_channel(server.address) as channel,
                pytest.raises(grpc.RpcError) as malformed,
            ):
                channel.unary_unary(_BATCH_METHOD, None, None)(raw[:-3], timeout=10)
            assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "Wire format was corrupt" in str(malformed.value.details())
        finally:
            assert server.stop() == 0
        stored[codec] = [
            line
            for path in sorted(server.events_dir.glob("*.jsonl"))
            for line in path.read_bytes().splitlines()
        ]
    response = pb.SendAdEventBatchResponse.FromString(answers["native"])
    reasons = [result.reason for result in response.results if result.reason]
    print(f"accepted {response.accepted_count}, rejected {response.rejected_count}: {reasons}")
    assert answers["native"] == answers["python"]
    assert reasons == [
        f"attributes: key {'b' + 'x' * 31!r} must have 1 to 64 characters",
        "user_id: required",
    ]
    # received_at differs between the two servers: compare the rest of each line.
    for codec_lines in stored.values():
        for line in codec_lines:
            record = json.loads(line)
            assert list(record["attributes"]) == ["a", "m", "z"]
    strip = [
        [{k: v for k, v in json.loads(line).items() if k != "received_at"} for line in lines]
        for lines in stored.values()
    ]
    assert strip[0] == strip[1] and len(strip[0]) == 5


def test_without_the_native_build_auto_warns_and_native_refuses(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HIDE_NATIVE)
    hide = {"PYTHONPATH": str(site)}
    server = ServerProcess(tmp_path / "auto", {**hide, "AEP_SERVER_CODEC": "auto"}).start()
    try:
        assert _serving_line(server)["codec"] == "python"
        assert "native codec is not built" in server.log()
        response = pb.SendAdEventBatchResponse.FromString(_send_raw(server, _batch()))
        assert response.accepted_count == 5
    finally:
        assert server.stop() == 0
    refused = ServerProcess(tmp_path / "native", {**hide, "AEP_SERVER_CODEC": "native"})
    refused.start(wait=False)
    exit_code = refused.wait_exit(timeout_s=30)
    errors = [line for line in refused.log().splitlines() if "server.codec=native" in line]
    print(f"server.codec=native without the build: exit {exit_code}: {errors}")
    assert exit_code == EXIT_STARTUP_FAILED
    assert errors, refused.log()
