"""Idle connections: how much server memory one open, quiet connection costs.

A fresh server is warmed up (``warmup`` connections opened and closed), its RSS is read, then
``connections`` clients connect and join (``/ws/chat``: connecting is joining; ``/v1/ws``:
``subscribe`` to one channel), plus the generator's publisher, which never publishes here. After
``settle`` seconds the RSS is read again: the difference divided by the connections is the cost
of one. ``/v1/ws`` clients send ``ping`` within the heartbeat, so none is closed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import fastws
from benchmarks.generator import LoadError, LoadRun
from benchmarks.scenarios import MB, LoadParams
from benchmarks.server import ServerProcess, ServerStartError, machine_busy_seconds
from benchmarks.targets import Target, with_broker_env

KIB = 1024


@dataclasses.dataclass(frozen=True)
class IdleResult:
    """Server memory with ``connections`` idle connections open."""

    target: str
    description: str
    ok: bool
    error: str | None = None
    requested: int = 0
    connected: int = 0
    connect_failures: int = 0
    #: Seconds it took to open and join them all.
    connect_s: float = 0.0
    rss_base_mb: float = 0.0
    rss_open_mb: float = 0.0
    peak_rss_mb: float = 0.0
    per_connection_kib: float | None = None
    #: Server CPU to accept the connections, per 1,000 of them (milliseconds).
    server_cpu_ms_per_1k_connections: float | None = None
    other_cpu_share: float = 0.0


async def _warm_up(port: int, target: Target, count: int) -> None:
    """Open and close ``count`` connections, so one-off allocations are not counted per client."""

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError, fastws.HandshakeFailed):
            client = await fastws.connect(
                "127.0.0.1",
                port,
                target.path,
                lambda _, __: None,
                subprotocol=target.protocol.subprotocol,
                open_timeout=5,
            )
            await asyncio.sleep(0.05)
            await client.close(wait=1.0)

    await asyncio.gather(*(one() for _ in range(count)))


def idle_connections(
    target: Target,
    *,
    connections: int,
    workers: int,
    log_dir: Path,
    settle: float = 2.0,
    warmup: int = 50,
    progress: Callable[[str], None] = lambda _: None,
) -> IdleResult:
    """Measure the server's RSS per idle connection with ``connections`` open."""
    base = IdleResult(target.name, target.description, ok=False, requested=connections)
    target = with_broker_env(target, {"BROKER_LIMITS__MAX_CONNECTIONS": str(connections + 100)})
    server = ServerProcess(target.command, log_path=log_dir / f"{target.name}-idle.log")
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        return dataclasses.replace(base, error=f"server start: {exc}")
    params = LoadParams(
        subscribers=connections,
        rate=1.0,
        duration=1.0,
        message_bytes=200,
        workers=workers,
        drain_timeout=1.0,
        client="fast",
        connect_timeout=120.0,
        connect_concurrency=50,
    )
    run = LoadRun(params.spec(f"ws://127.0.0.1:{server.port}{target.path}", target))
    try:
        asyncio.run(_warm_up(server.port, target, warmup))
        time.sleep(1.0)
        rss_base = server.monitor.sample_rss()
        cpu_before = server.monitor.cpu_seconds()
        busy_before = machine_busy_seconds()
        began = time.monotonic()
        run.start()
        connect_s = time.monotonic() - began
        progress(f"{target.name}: {run.connected} idle connections open, settling")
        time.sleep(settle)
        rss_open = server.monitor.sample_rss()
        cpu = server.monitor.cpu_seconds() - cpu_before
        wall = time.monotonic() - began
        busy = machine_busy_seconds() - busy_before
        peak = server.monitor.peak_rss
    except LoadError as exc:
        return dataclasses.replace(base, error=f"{exc}; log: {server.log_tail(3)}")
    finally:
        server.stop()  # first: thousands of departures would each be a chat broadcast
        run.close()
    opened = run.connected + 1  # the publisher is connected too
    return dataclasses.replace(
        base,
        ok=True,
        connected=run.connected,
        connect_failures=run.connect_failures,
        connect_s=connect_s,
        rss_base_mb=rss_base / MB,
        rss_open_mb=rss_open / MB,
        peak_rss_mb=peak / MB,
        per_connection_kib=(rss_open - rss_base) / opened / KIB,
        server_cpu_ms_per_1k_connections=cpu * 1000 / (opened / 1000),
        other_cpu_share=max(0.0, busy - cpu) / wall if wall > 0 else 0.0,
    )
