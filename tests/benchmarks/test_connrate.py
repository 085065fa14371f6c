"""The connection-rate scenario: each target's own opening handshake, counted to the end.

A cycle that counted a connection as opened before the target's handshake completed (NATS'
``PONG``, socket.io's namespace acknowledgement, ``/v1/ws``'s ``welcome``) would make that target
look faster than it is; one that never completed it would count failures instead. Real servers
on free ports: the broker always, the NATS server and socket.io when installed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.connrate import connection_rate
from benchmarks.targets import build_targets, peer_unavailable

CONNECTIONS = 40


@pytest.mark.parametrize(
    "name", ["broker-v1-json", "broker-v1-msgpack", "naive", "nats", "socketio"]
)
def test_a_run_opens_exactly_the_connections_asked_for_through_each_handshake(
    name: str, tmp_path: Path
) -> None:
    reason = peer_unavailable(name)  # socket.io: installed from its lock
    if reason is not None:
        pytest.skip(reason)
    result = connection_rate(
        build_targets()[name],
        concurrency=4,
        duration=60.0,
        workers=1,
        log_dir=tmp_path,
        connections=CONNECTIONS,
    )
    assert result.ok, result.error
    assert result.failures == {}
    assert result.cycles == CONNECTIONS
    assert result.open_latency is not None and result.open_latency.count == CONNECTIONS
    assert result.per_second > 0 and result.seconds_for_10k is not None
    # Measured (a Go server may use less than one 10 ms clock tick for 40 connections).
    assert result.server_cpu_ms_per_1k is not None and result.server_cpu_ms_per_1k >= 0


def test_a_server_that_answers_another_protocol_opens_nothing(tmp_path: Path) -> None:
    # The socket.io handshake against the broker: its first frame is a welcome, not ``0{...}``.
    targets = build_targets()
    broker = targets["broker-v1-json"]
    mismatched = dataclasses.replace(broker, protocol=targets["socketio"].protocol, path="/v1/ws")
    result = connection_rate(
        mismatched, concurrency=2, duration=2.0, workers=1, log_dir=tmp_path, connections=5
    )
    assert result.ok, result.error
    assert result.cycles == 0
    assert set(result.failures) == {"HandshakeFailed"}
