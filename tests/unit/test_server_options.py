from __future__ import annotations

from aep.ingest.server import _channel_options
from aep.settings import load_settings


def test_keepalive_and_connection_age_reach_grpc() -> None:
    settings = load_settings(
        environ={
            "AEP_SERVER_KEEPALIVE_TIME": "20s",
            "AEP_SERVER_MAX_CONNECTION_AGE": "2m",
            "AEP_SERVER_MAX_MESSAGE_BYTES": "1MiB",
        }
    )
    options = dict(_channel_options(settings.server))
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    # The servicer answers up to twice the limit with INVALID_ARGUMENT naming it.
    assert options["grpc.max_receive_message_length"] == 2 * 1024 * 1024


def test_the_receive_window_is_fixed_at_server_receive_window() -> None:
    settings = load_settings(environ={"AEP_SERVER_RECEIVE_WINDOW": "128KiB"})
    options = dict(_channel_options(settings.server))
    # BDP probing would grow each call's window to several MB, which a client
    # that never reads its acks could fill on every stream.
    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.http2.lookahead_bytes"] == 128 * 1024
