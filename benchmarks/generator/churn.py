"""Connection churn: worker processes that open and close connections as fast as the server allows.

Each worker runs ``concurrency`` loops for ``duration`` seconds; one cycle is: TCP connect and
WebSocket handshake (``benchmarks.fastws``), on ``/v1/ws`` also the ``welcome`` message, then the
closing handshake. ``run_churn`` spawns the workers, starts them together, and merges what they
counted: completed cycles, failures by kind, and the time to open (connect to open, or to
``welcome``) of every cycle. Every wait is bounded; stragglers are killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection, wait
from typing import TypeVar
from urllib.parse import urlsplit

from benchmarks import fastws
from benchmarks.generator import loop
from benchmarks.generator.control import CpuClock, CpuUsage, Go, Ready
from benchmarks.wire import Protocol

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ChurnSpec:
    """Where to connect, how many loops per worker, and for how long."""

    url: str
    protocol: Protocol
    concurrency: int = 25
    duration: float = 5.0
    open_timeout: float = 5.0


@dataclasses.dataclass
class ChurnReport:
    """What one worker counted."""

    cycles: int
    failures: Counter[str]
    #: Time to open of each completed cycle, microseconds (``array('q')`` bytes).
    open_us: bytes
    cpu: CpuUsage


@dataclasses.dataclass
class ChurnResult:
    """The merged reports of every worker."""

    cycles: int
    failures: Counter[str]
    open_us: array[int]
    wall_s: float
    generator_cpu: list[CpuUsage]

    @property
    def per_second(self) -> float:
        return self.cycles / self.wall_s if self.wall_s > 0 else 0.0


async def _cycle(spec: ChurnSpec, host: str, port: int, path: str) -> int:
    """One open and close; returns the time to open in microseconds."""
    welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(_: bytes, __: bool) -> None:
        if not welcome.done():
            welcome.set_result(None)

    began = time.perf_counter_ns()
    client = await fastws.connect(
        host,
        port,
        path,
        on_message,
        subprotocol=spec.protocol.subprotocol,
        open_timeout=spec.open_timeout,
    )
    try:
        if spec.protocol.v1:
            async with asyncio.timeout(spec.open_timeout):
                await welcome
        opened = (time.perf_counter_ns() - began) // 1000
    finally:
        await client.close(wait=spec.open_timeout)
    return opened


async def _worker(spec: ChurnSpec, conn: Connection) -> None:
    parts = urlsplit(spec.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    if parts.query:  # e.g. the token query parameter of /v1/ws
        path += "?" + parts.query
    conn.send(Ready(0, 0))
    go = await asyncio.to_thread(conn.recv)
    assert isinstance(go, Go)
    await asyncio.sleep(max(0.0, (go.start_ns - time.time_ns()) / 1e9))
    clock = CpuClock()
    clock.start()
    deadline = time.monotonic() + spec.duration
    failures: Counter[str] = Counter()
    opens: array[int] = array("q")

    async def run_loop() -> None:
        while time.monotonic() < deadline:
            try:
                opens.append(await _cycle(spec, host, port, path))
            except (OSError, TimeoutError, fastws.HandshakeFailed) as exc:
                failures[type(exc).__name__] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(run_loop() for _ in range(spec.concurrency)))
    conn.send(ChurnReport(len(opens), failures, opens.tobytes(), clock.usage()))


def churn_main(spec: ChurnSpec, conn: Connection) -> None:
    """Entry point of a churn worker process."""
    try:
        loop.run(lambda: _worker(spec, conn))
    except (KeyboardInterrupt, TimeoutError, EOFError):
        pass


def run_churn(spec: ChurnSpec, workers: int) -> ChurnResult:
    """Run ``workers`` processes of ``spec.concurrency`` loops each; merge their reports."""
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes = []
    for index in range(workers):
        parent, child = context.Pipe()
        process = context.Process(
            target=churn_main, args=(spec, child), name=f"bench-churn-{index}", daemon=True
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        _collect(pipes, Ready, time.monotonic() + 30)
        start_ns = time.time_ns() + 200_000_000
        for pipe in pipes:
            pipe.send(Go(start_ns))
        reports = _collect(pipes, ChurnReport, time.monotonic() + spec.duration + 30)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=2)
        for pipe in pipes:
            pipe.close()
    opens: array[int] = array("q")
    failures: Counter[str] = Counter()
    for report in reports:
        opens.frombytes(report.open_us)
        failures.update(report.failures)
    wall = max((report.cpu.wall_seconds for report in reports), default=spec.duration)
    return ChurnResult(
        cycles=sum(report.cycles for report in reports),
        failures=failures,
        open_us=opens,
        wall_s=wall,
        generator_cpu=[report.cpu for report in reports],
    )


def _collect(pipes: list[Connection], kind: type[T], deadline: float) -> list[T]:
    """One ``kind`` message from every pipe by the deadline (RuntimeError otherwise)."""
    got: dict[int, T] = {}
    while len(got) < len(pipes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"churn: {len(pipes) - len(got)} worker(s) did not answer")
        for ready in wait([p for i, p in enumerate(pipes) if i not in got], timeout=remaining):
            assert isinstance(ready, Connection)
            index = pipes.index(ready)
            try:
                message = ready.recv()
            except EOFError:
                raise RuntimeError("churn: a worker process exited") from None
            if isinstance(message, kind):
                got[index] = message
    return [got[index] for index in range(len(pipes))]
