"""Scenarios with a large population of subscribers: many channels, and 10,000 connections.

- ``many_channels``: ``channels`` channels with ``per_channel`` subscribers each on ``/v1/ws``;
  subscriber ``i`` subscribes to channel ``i % channels`` and the publisher round-robins over
  the channels, so each subscriber is owed one publication in ``channels``. The plain endpoints
  have a single room, so this scenario only applies to the ``/v1/ws`` targets.
- ``c10k``: ``connections`` subscribers on one channel (or the chat room) of one server
  process, one broadcast per second for ``duration`` seconds.

Both start a fresh server whose connection limit (broker targets: ``limits.max_connections``,
10,000 by default) is raised just above the population plus the publisher, and stop it before
the clients close, so that departures do not turn into a storm of chat broadcasts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from benchmarks.scenarios import LoadParams, ScenarioResult, run_load
from benchmarks.server import ServerProcess, ServerStartError
from benchmarks.targets import Target, with_broker_env

#: Connections the harness allows above a scenario's population (the publisher, warm-ups).
_HEADROOM = 100


def with_room_for(target: Target, subscribers: int) -> Target:
    """``target`` with its connection limit raised just above ``subscribers`` (broker targets)."""
    limit = {"BROKER_LIMITS__MAX_CONNECTIONS": str(subscribers + _HEADROOM)}
    return with_broker_env(target, limit)


def _run(
    target: Target,
    params: LoadParams,
    log_path: Path,
    progress: Callable[[str], None],
) -> ScenarioResult:
    target = with_room_for(target, params.subscribers)
    server = ServerProcess(target.command, log_path=log_path, start_timeout=30)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        tail = server.log_tail(5).replace("\n", " | ")
        base = ScenarioResult(target.name, target.description, 0, params, ok=False)
        return dataclasses.replace(base, error=f"server start: {exc}; log: {tail}")
    try:
        return run_load(server, target, params, progress, stop_server_first=True)
    finally:
        server.stop()


def many_channels(
    target: Target,
    *,
    channels: int,
    per_channel: int,
    rate: float,
    duration: float,
    message_bytes: int,
    workers: int,
    log_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> ScenarioResult:
    """``channels`` x ``per_channel`` subscribers; ``rate`` publications/s spread over channels."""
    params = many_channels_params(
        channels=channels,
        per_channel=per_channel,
        rate=rate,
        duration=duration,
        message_bytes=message_bytes,
        workers=workers,
    )
    return _run(target, params, log_dir / f"{target.name}-channels.log", progress)


def many_channels_params(
    *,
    channels: int,
    per_channel: int,
    rate: float,
    duration: float,
    message_bytes: int,
    workers: int,
) -> LoadParams:
    """The load of the many-channels scenario (also stepped up by ``benchmarks.channels_max``)."""
    return LoadParams(
        subscribers=channels * per_channel,
        rate=rate,
        duration=duration,
        message_bytes=message_bytes,
        workers=workers,
        drain_timeout=5.0,
        client="fast",
        channels=channels,
        warmup_interval=1.0,
        connect_timeout=120.0,
        connect_concurrency=50,
    )


def c10k(
    target: Target,
    *,
    connections: int,
    duration: float,
    message_bytes: int,
    workers: int,
    log_dir: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> ScenarioResult:
    """``connections`` subscribers on one channel; one broadcast per second."""
    params = LoadParams(
        subscribers=connections,
        rate=1.0,
        duration=duration,
        message_bytes=message_bytes,
        workers=workers,
        drain_timeout=5.0,
        client="fast",
        warmup_interval=1.0,
        connect_timeout=180.0,
        connect_concurrency=50,
    )
    return _run(target, params, log_dir / f"{target.name}-c10k.log", progress)
