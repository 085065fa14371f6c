"""The publisher process: one client sending publications on a clock (open loop).

Publication ``i`` is due at ``start + i / rate`` and is sent then, whatever happened to earlier
ones: the publisher never waits for an answer, so a slow server shows up as latency and loss,
not as a slower publisher. Only a send that the connection itself blocks (the server stopped
reading it) can hold it back; the run still ends at its deadline, and what could not be sent
by then is reported as unsent. It also reads every frame the server sends it (on ``/ws/chat``
the sender gets its own broadcasts), so it never becomes a slow consumer itself.

With several channels, publication ``seq`` goes to channel ``seq % channels`` and each warm-up
round sends one publication to every channel. With ``client == "fast"`` it uses
``benchmarks.fastws``; a send then only queues, and the publisher waits only while the socket
pushes back (the transport's buffer is above its high-water mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from multiprocessing.connection import Connection
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks import fastws, peerwire
from benchmarks.generator import loop
from benchmarks.generator.control import (
    AsyncInbox,
    CpuClock,
    CpuUsage,
    Go,
    LoadSpec,
    Ready,
    Stop,
    Warmup,
)
from benchmarks.wire import (
    WARMUP_SEQ,
    PayloadFactory,
    Protocol,
    decode_v1_frame,
    encode_ping,
    encode_publish,
)

#: The shortest sleep the publisher asks for. Under uvloop a timer has millisecond resolution and
#: ``asyncio.sleep`` below 1 ms returns at once: waiting for each publication's own due time at
#: rates above 1,000/s would spin a core. Instead the publisher sleeps at least this long and then
#: sends every publication that has come due (each stamped when it is sent).
MIN_SLEEP = 0.001


@dataclasses.dataclass
class PublisherReport:
    planned: int
    sent: int
    #: Wall-clock times (ns) of the first and last send of the run.
    first_send_ns: int
    last_send_ns: int
    #: Largest delay of a send past its due time, in milliseconds (the publisher's own lag).
    max_lag_ms: float
    #: Whether a send was still blocked when the deadline passed.
    blocked: bool
    frames_received: int
    errors: Counter[str]
    closed: str | None
    cpu: CpuUsage
    #: Times the publisher's loop slept while publishing (at most one per ``MIN_SLEEP``).
    wakeups: int = 0


class Publisher:
    def __init__(
        self, spec: LoadSpec, ws: ClientConnection | None, fast: fastws.FastWebSocket | None = None
    ) -> None:
        self.spec = spec
        self.ws = ws
        self.fast = fast
        self.channels = [spec.channel_name(index) for index in range(max(1, spec.channels))]
        self.factory = PayloadFactory(spec.message_bytes)
        self.frames_received = 0
        self.errors: Counter[str] = Counter()
        self.closed: str | None = None
        self.sent = 0
        self.first_send_ns = 0
        self.last_send_ns = 0
        self.max_lag = 0.0
        self.blocked = False
        #: Set once the publisher may publish (socket.io: the namespace joined).
        self.joined = asyncio.Event()
        if spec.protocol is not Protocol.SOCKETIO:
            self.joined.set()
        #: Loop wake-ups while publishing (how far from spinning the publisher was).
        self.wakeups = 0

    def frame(self, seq: int, channel: str | None = None) -> str | bytes:
        """Publication ``seq`` (to its channel unless ``channel`` is given), stamped now."""
        if channel is None:
            channel = self.channels[seq % len(self.channels)] if seq >= 0 else self.channels[0]
        return encode_publish(self.spec.protocol, channel, self.factory, seq, time.time_ns())

    async def send(self, frame: str | bytes) -> None:
        """Send one frame; waits only while the connection pushes back."""
        if self.fast is not None:
            self.fast.send(frame)
            if self.fast.paused:
                await self.fast.drain()
            if self.fast.closed.done():
                raise ConnectionClosed(None, None)
        else:
            assert self.ws is not None
            await self.ws.send(frame)

    def on_message(self, frame: bytes, binary: bool = False) -> None:
        self.frames_received += 1
        protocol = self.spec.protocol
        if protocol is Protocol.NATS:
            if b"PING\r\n" in frame and self.fast is not None:
                self.fast.send(peerwire.NATS_PONG)
            if b"-ERR" in frame:
                self.errors["nats:-ERR"] += 1
        elif protocol is Protocol.SOCKETIO:
            if frame == b"2" and self.fast is not None:
                self.fast.send(peerwire.SOCKETIO_PONG)
            elif frame.startswith(b"40"):
                self.joined.set()
        elif protocol.v1:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                for message in decode_v1_frame(self.spec.protocol, frame):
                    if message.type in ("error", "disconnect"):
                        self.errors[f"{message.type}:{message.code}"] += 1

    async def read(self) -> None:
        if self.fast is not None:
            self.closed = await self.fast.closed
            return
        assert self.ws is not None
        try:
            while True:
                self.on_message(await self.ws.recv(decode=False))
        except ConnectionClosed as exc:
            self.closed = f"closed {exc.rcvd.code if exc.rcvd is not None else 'no close frame'}"

    async def warm_up(self) -> None:
        """Until cancelled: every ``warmup_interval``, one warm-up publication per channel."""
        while True:
            for channel in self.channels:
                await self.send(self.frame(WARMUP_SEQ, channel))
            await asyncio.sleep(self.spec.warmup_interval)

    async def keepalive(self) -> None:
        """``/v1/ws`` only: a ping now and then, in case publications stop (blocked send)."""
        request = 1_000_000
        while True:
            await asyncio.sleep(5)
            request += 1
            await self.send(encode_ping(self.spec.protocol, request))

    async def publish(self, start_ns: int) -> None:
        spec = self.spec
        interval = 1.0 / spec.rate
        start = time.monotonic() + (start_ns - time.time_ns()) / 1e9
        deadline = start + spec.duration + spec.send_grace
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                for seq in range(spec.planned):
                    due = start + seq * interval
                    now = time.monotonic()
                    if due > now:
                        # Not due yet: sleep until it is, but never less than ``MIN_SLEEP``.
                        await asyncio.sleep(max(due - now, MIN_SLEEP))
                        self.wakeups += 1
                    else:
                        self.max_lag = max(self.max_lag, now - due)
                    frame = self.frame(seq)
                    if seq == 0:
                        self.first_send_ns = time.time_ns()
                    await self.send(frame)
                    self.sent = seq + 1
                    self.last_send_ns = time.time_ns()
        except TimeoutError:
            self.blocked = self.sent < spec.planned
        except ConnectionClosed:
            pass


def _loop_time(monotonic_deadline: float) -> float:
    """Convert a ``time.monotonic()`` deadline to the running loop's clock."""
    loop_now = asyncio.get_running_loop().time()
    return loop_now + (monotonic_deadline - time.monotonic())


async def _open(spec: LoadSpec) -> Publisher:
    subprotocol = spec.protocol.subprotocol
    if spec.client == "fast":
        parts = urlsplit(spec.url)
        publisher = Publisher(spec, None)
        publisher.fast = await fastws.connect(
            parts.hostname or "127.0.0.1",
            parts.port or 80,
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            publisher.on_message,
            subprotocol=subprotocol,
            open_timeout=spec.connect_timeout,
        )
        if spec.protocol is Protocol.NATS:
            publisher.fast.send(peerwire.NATS_CONNECT)
        elif spec.protocol is Protocol.SOCKETIO:
            publisher.fast.send(peerwire.SOCKETIO_CONNECT)
            async with asyncio.timeout(spec.connect_timeout):
                await publisher.joined.wait()
        return publisher
    ws = await connect(
        spec.url,
        compression=None,
        subprotocols=[subprotocol] if subprotocol is not None else None,
        max_queue=4096,
        max_size=16 * 1024 * 1024,
        ping_interval=None,
        close_timeout=1,
        open_timeout=spec.connect_timeout,
        proxy=None,
    )
    return Publisher(spec, ws)


async def _close(publisher: Publisher) -> None:
    if publisher.fast is not None:
        await publisher.fast.close(wait=1.0)
        return
    ws = publisher.ws
    assert ws is not None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            await ws.close()
    ws.transport.abort()


async def _main(spec: LoadSpec, conn: Connection) -> None:
    inbox = AsyncInbox(conn)
    clock = CpuClock()
    publisher = await _open(spec)
    tasks = [asyncio.create_task(publisher.read())]
    if spec.protocol.v1:
        tasks.append(asyncio.create_task(publisher.keepalive()))
    inbox.send(Ready(1, 0))
    warmup: asyncio.Task[None] | None = None
    try:
        while True:
            command = await inbox.get()
            if isinstance(command, Warmup) and warmup is None:
                warmup = asyncio.create_task(publisher.warm_up())
            elif isinstance(command, Go):
                if warmup is not None:
                    warmup.cancel()
                    await asyncio.gather(warmup, return_exceptions=True)
                clock.start()
                await publisher.publish(command.start_ns)
                inbox.send(
                    PublisherReport(
                        planned=spec.planned,
                        sent=publisher.sent,
                        first_send_ns=publisher.first_send_ns,
                        last_send_ns=publisher.last_send_ns,
                        max_lag_ms=publisher.max_lag * 1000,
                        blocked=publisher.blocked,
                        frames_received=publisher.frames_received,
                        errors=publisher.errors,
                        closed=publisher.closed,
                        cpu=clock.usage(),
                        wakeups=publisher.wakeups,
                    )
                )
            elif isinstance(command, Stop):
                break
    finally:
        if warmup is not None:
            tasks.append(warmup)
        await _close(publisher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def publisher_main(spec: LoadSpec, conn: Connection) -> None:
    """Entry point of the publisher process."""
    try:
        loop.run(lambda: _main(spec, conn))
    except (KeyboardInterrupt, TimeoutError):
        pass
