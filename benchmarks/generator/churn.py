"""Connection churn: worker processes that open and close connections as fast as the server allows.

Each worker runs ``concurrency`` loops for ``duration`` seconds, or until it has opened its share
of ``connections`` when that is set; one cycle is: TCP connect and WebSocket handshake
(``benchmarks.fastws``), then the target's own opening handshake (``Opening``), then the closing
handshake. A connection counts as opened when its protocol says so: on ``/v1/ws`` at the
``welcome`` message; on the NATS server at the ``PONG`` answering ``CONNECT`` + ``PING`` (sent
once its ``INFO`` came); on socket.io at the ``40{"sid":...}`` that acknowledges the namespace
connect ``40`` (sent once the Engine.IO open packet ``0{...}`` came); on ``/ws/chat`` at the
WebSocket handshake. ``run_churn`` spawns the workers, starts them together, and merges what they
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

from benchmarks import fastws, peerwire
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
    #: Connections each worker opens before it stops (None: open and close for ``duration``,
    #: which then stays the bound).
    connections: int | None = None


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


class Opening:
    """The target protocol's opening handshake, driven by the frames the server sends.

    ``on_message`` is the fast client's message callback; ``run`` sends what the protocol needs
    and returns once the connection counts as opened (or raises ``HandshakeFailed``)."""

    __slots__ = ("_frames", "_nats", "protocol")

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self._frames: asyncio.Queue[bytes] = asyncio.Queue()
        self._nats = peerwire.NatsReader() if protocol is Protocol.NATS else None

    def on_message(self, frame: bytes, _: bool) -> None:
        if self._nats is None:
            self._frames.put_nowait(frame)
            return
        for kind, rest in self._nats.feed(frame):  # NATS: one entry per protocol message
            self._frames.put_nowait(kind if kind != b"-ERR" else b"-ERR " + rest)

    async def _next(self, expected: bytes) -> None:
        frame = await self._frames.get()
        if not frame.startswith(expected):
            raise fastws.HandshakeFailed(f"expected {expected!r}, got {frame[:60]!r}")

    async def run(self, client: fastws.FastWebSocket) -> None:
        protocol = self.protocol
        if protocol.v1:
            await self._next(b"")  # the welcome (its type is not decoded: JSON or MessagePack)
        elif protocol is Protocol.NATS:
            await self._next(b"INFO")
            client.send_binary(peerwire.NATS_CONNECT + peerwire.NATS_PING)
            while True:  # a server PING may come first
                frame = await self._frames.get()
                if frame == b"PONG":
                    return
                if frame == b"PING":
                    client.send_binary(peerwire.NATS_PONG)
                elif frame != b"+OK":
                    raise fastws.HandshakeFailed(f"expected PONG, got {frame[:60]!r}")
        elif protocol is Protocol.SOCKETIO:
            await self._next(b"0{")  # Engine.IO open
            client.send_text(peerwire.SOCKETIO_CONNECT)
            await self._next(b"40")  # the namespace connect acknowledged (44: refused)


async def _cycle(spec: ChurnSpec, host: str, port: int, path: str) -> int:
    """One open and close; returns the time to open in microseconds."""
    opening = Opening(spec.protocol)
    began = time.perf_counter_ns()
    client = await fastws.connect(
        host,
        port,
        path,
        opening.on_message,
        subprotocol=spec.protocol.subprotocol,
        open_timeout=spec.open_timeout,
    )
    try:
        async with asyncio.timeout(spec.open_timeout):
            await opening.run(client)
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

    wanted = spec.connections
    claimed = 0

    async def run_loop() -> None:
        nonlocal claimed
        while time.monotonic() < deadline and (wanted is None or claimed < wanted):
            claimed += 1
            try:
                opens.append(await _cycle(spec, host, port, path))
            except (OSError, TimeoutError, fastws.HandshakeFailed) as exc:
                claimed -= 1  # try again: failures are counted, not opened
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
        reports = _collect(pipes, ChurnReport, time.monotonic() + spec.duration + 60)
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
