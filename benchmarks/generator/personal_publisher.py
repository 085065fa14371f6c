"""The publisher of the large-population scenarios: broadcasts and personal publications on a clock.

One ``/v1/ws`` client (``benchmarks.fastws``) sends, open loop, from the ``Go`` time on:
broadcast ``k`` to the shared channel at ``start + k / broadcast_rate`` and personal publication
``j`` to channel ``<prefix>-<j % population>`` at ``start + j / personal_rate``, for ``duration``
seconds; it never waits for an answer, so a slow server shows up as latency and loss. Before
``Go``, on ``Warmup``, it sends a warm-up broadcast (seq -1) every second. It pings every 10 s,
so that the heartbeat never closes it while thousands of subscribers connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from multiprocessing.connection import Connection

import msgspec

from benchmarks import fastws
from benchmarks.generator import loop
from benchmarks.generator.control import (
    AsyncInbox,
    CpuClock,
    CpuUsage,
    Go,
    Ready,
    Stop,
    Warmup,
)
from benchmarks.generator.personal import personal_channel
from benchmarks.wire import (
    WARMUP_SEQ,
    PayloadFactory,
    Protocol,
    decode_v1_frame,
    encode_ping,
    encode_publish,
)

#: Shortest sleep asked for (uvloop's timers have millisecond resolution).
_MIN_SLEEP = 0.001


@dataclasses.dataclass(frozen=True)
class PublisherSpec:
    host: str
    port: int
    path: str
    protocol: Protocol
    population: int
    shared: str
    prefix: str
    duration: float
    broadcast_rate: float = 1.0
    personal_rate: float = 1000.0
    message_bytes: int = 200


@dataclasses.dataclass
class PublisherReport:
    broadcasts: int
    personal: int
    #: Largest delay of a send past its due time, in milliseconds.
    max_lag_ms: float
    errors: Counter[str]
    closed: str | None
    cpu: CpuUsage


class _Publisher:
    def __init__(self, spec: PublisherSpec) -> None:
        self.spec = spec
        self.factory = PayloadFactory(spec.message_bytes)
        self.errors: Counter[str] = Counter()
        self.ws: fastws.FastWebSocket | None = None

    def on_message(self, frame: bytes, binary: bool = False) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            for message in decode_v1_frame(self.spec.protocol, frame):
                if message.type in ("error", "disconnect"):
                    self.errors[f"{message.type}:{message.code}"] += 1

    def publish(self, channel: str, seq: int) -> None:
        assert self.ws is not None
        frame = encode_publish(self.spec.protocol, channel, self.factory, seq, time.time_ns())
        self.ws.send(frame)

    async def keepalive(self) -> None:
        request = 0
        while True:
            await asyncio.sleep(10)
            request += 1
            if self.ws is not None:
                self.ws.send(encode_ping(self.spec.protocol, request))

    async def warm_up(self) -> None:
        while True:
            self.publish(self.spec.shared, WARMUP_SEQ)
            await asyncio.sleep(1.0)

    async def run(self, start_ns: int) -> tuple[int, int, float]:
        """Publish from ``start_ns`` for ``duration`` s; the counts sent and the worst lag."""
        spec = self.spec
        ws = self.ws
        assert ws is not None
        broadcasts = personal = 0
        total_b = round(spec.duration * spec.broadcast_rate)
        total_p = round(spec.duration * spec.personal_rate)
        lag = 0.0
        while (broadcasts < total_b or personal < total_p) and not ws.closed.done():
            now = time.time_ns()
            elapsed = (now - start_ns) / 1e9
            due_b = min(total_b, int(elapsed * spec.broadcast_rate) + 1) if elapsed >= 0 else 0
            due_p = min(total_p, int(elapsed * spec.personal_rate) + 1) if elapsed >= 0 else 0
            if broadcasts < due_b:
                lag = max(lag, elapsed - broadcasts / spec.broadcast_rate)
            if personal < due_p:
                lag = max(lag, elapsed - personal / spec.personal_rate)
            while broadcasts < due_b:
                self.publish(spec.shared, broadcasts)
                broadcasts += 1
            while personal < due_p:
                channel = personal_channel(spec.prefix, personal % spec.population)
                self.publish(channel, personal)
                personal += 1
            if ws.paused:
                await ws.drain()
            if broadcasts >= total_b and personal >= total_p:
                break
            next_b = broadcasts / spec.broadcast_rate if broadcasts < total_b else 1e9
            next_p = personal / spec.personal_rate if personal < total_p else 1e9
            wait = min(next_b, next_p) - (time.time_ns() - start_ns) / 1e9
            await asyncio.sleep(max(_MIN_SLEEP, wait))
        return broadcasts, personal, lag * 1000


async def _main(spec: PublisherSpec, conn: Connection) -> None:
    inbox = AsyncInbox(conn)
    publisher = _Publisher(spec)
    ws = await fastws.connect(
        spec.host,
        spec.port,
        spec.path,
        publisher.on_message,
        subprotocol=spec.protocol.subprotocol,
        open_timeout=30,
    )
    publisher.ws = ws
    keepalive = asyncio.create_task(publisher.keepalive())
    warm: asyncio.Task[None] | None = None
    inbox.send(Ready(1, 0))
    try:
        while True:
            command = await inbox.get()
            if isinstance(command, Warmup):
                warm = warm or asyncio.create_task(publisher.warm_up())
            elif isinstance(command, Go):
                if warm is not None:
                    warm.cancel()
                clock = CpuClock()
                clock.start()
                broadcasts, personal, lag = await publisher.run(command.start_ns)
                closed = ws.closed.result() if ws.closed.done() else None
                inbox.send(
                    PublisherReport(
                        broadcasts, personal, lag, publisher.errors, closed, clock.usage()
                    )
                )
            elif isinstance(command, Stop):
                break
    finally:
        keepalive.cancel()
        if warm is not None:
            warm.cancel()
        await ws.close(wait=1.0)


def publisher_main(spec: PublisherSpec, conn: Connection) -> None:
    """Entry point of the publisher process."""
    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        loop.run(lambda: _main(spec, conn))
