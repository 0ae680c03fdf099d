"""Random and malformed bytes at the real server: it always answers with a status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aep.proto.adevents.v1 import ad_events_pb2 as pb
from tests.helpers.support import ServerProcess, running_server, stored_events, valid_event

pytestmark = pytest.mark.integration

METHODS = ("SendAdEvent", "SendAdEventBatch", "HealthCheck")
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _mutations() -> st.SearchStrategy[bytes]:
    valid = pb.SendAdEventBatchRequest(
        events=[valid_event(event_id=f"fz{i}") for i in range(3)]
    ).SerializeToString()
    flip = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
        lambda change: valid[: change[0]] + bytes([change[1]]) + valid[change[0] + 1 :]
    )
    cut = st.integers(0, len(valid)).map(lambda n: valid[:n])
    return st.one_of(st.binary(max_size=300), flip, cut)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=_mutations(), method=st.sampled_from(METHODS))
def test_random_and_mutated_bytes_always_get_a_status(
    fuzz_server: ServerProcess, payload: bytes, method: str
) -> None:
    with grpc.insecure_channel(fuzz_server.address) as channel:
        call = channel.unary_unary(f"/adevents.v1.AdEventService/{method}", None, None)
        try:
            call(payload, timeout=5)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
    assert code in ANSWERS, (code, payload)


def test_the_fuzzed_server_is_healthy_and_stored_only_whole_events(
    fuzz_server: ServerProcess,
) -> None:
    # Runs after the fuzzing above (same module-scoped server).
    rss_before = _rss_mb(fuzz_server.process.pid)  # type: ignore[union-attr]
    big = "x" * 100_000
    with grpc.insecure_channel(
        fuzz_server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        raw = channel.unary_unary("/adevents.v1.AdEventService/SendAdEventBatch", None, None)
        codes = []
        for payload in (
            pb.SendAdEventBatchRequest(events=[valid_event(user_id=big)]).SerializeToString(),
            pb.SendAdEventBatchRequest(
                events=[valid_event(attributes={f"k{i}": big for i in range(50)})]  # 5 MB
            ).SerializeToString(),
            b"\x0a" * 20_000_000,  # a 20 MB flood, over twice server.max_message_bytes
        ):
            try:
                raw(payload, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        tiny_codes = set()
        for _ in range(2000):  # a flood of tiny messages
            try:
                raw(b"", timeout=5)
                tiny_codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                tiny_codes.add(error.code())
    assert tiny_codes == {grpc.StatusCode.INVALID_ARGUMENT}  # "events: the batch is empty"
    assert codes[0] == grpc.StatusCode.OK  # answered per event (user_id too long), not an error
    assert codes[1] == grpc.StatusCode.INVALID_ARGUMENT  # over server.max_message_bytes
    assert codes[2] == grpc.StatusCode.RESOURCE_EXHAUSTED  # cut by gRPC core
    assert _rss_mb(fuzz_server.process.pid) - rss_before < 100  # type: ignore[union-attr]
    assert fuzz_server.stop() == 0
    for event in stored_events(fuzz_server.events_dir):
        # Whatever got stored is a whole, valid event (the fuzzer's flips can
        # produce valid events too; they must then be complete).
        assert event["user_id"] and event["ad_id"]
        assert str(event["event_type"]).startswith("EVENT_TYPE_")
        assert str(event["timestamp"]).endswith("Z")
