"""A subscriber worker process: many WebSocket clients on one event loop.

Each client joins its channel (``/ws/chat``: by connecting; ``/v1/ws``: ``subscribe``), reads
every frame as soon as it arrives, and records for each publication of the run: its latency
(receive time minus the publisher's timestamp, in microseconds), duplicates, and order. Loss is
what is still missing when the parent's drain deadline passes.

The client is the ``websockets`` library's or, with ``LoadSpec.client == "fast"``,
``benchmarks.fastws`` (frames handled in its ``data_received``, no task per client).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from array import array
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
    Drain,
    Go,
    Ready,
    Stop,
    Warm,
    WorkerSpec,
)
from benchmarks.wire import (
    Payload,
    Protocol,
    decode_chat,
    decode_payload,
    decode_v1_frame,
    encode_ping,
    encode_subscribe,
)

_MAX_QUEUE = 4096
_MAX_SIZE = 16 * 1024 * 1024


@dataclasses.dataclass
class WorkerReport:
    """What one worker process measured."""

    index: int
    #: Latencies of every publication received, in microseconds (``array('q')`` bytes).
    latencies_us: bytes
    #: Publications received per client (unique, of the run).
    received: list[int]
    duplicates: int
    out_of_order: int
    unexpected: int
    bad_frames: int
    gaps: int
    errors: Counter[str]
    #: How each client's connection ended, if it did before the drain ended.
    closes: Counter[str]
    #: Frame bytes received for the run's publications (to size what a stalled client was sent).
    payload_bytes: int
    cpu: CpuUsage
    #: Publications of the run owed to each client (its channel's share of what was sent).
    owed: list[int] = dataclasses.field(default_factory=list)


class Subscriber:
    """One healthy client and its bookkeeping."""

    def __init__(self, spec: WorkerSpec, position: int = 0) -> None:
        self.load = spec.load
        self.position = position
        self.protocol = spec.load.protocol
        self.channel = spec.load.channel_name(position)
        self.seen = bytearray(spec.load.planned)
        self.latencies: array[int] = array("q")
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.unexpected = 0
        self.bad_frames = 0
        self.gaps = 0
        self.payload_bytes = 0
        self.errors: Counter[str] = Counter()
        self.last_seq = -1
        self.last_offset = -1
        #: Set by the first warm-up publication, or when the connection ends.
        self.warm = asyncio.Event()
        self.closed: str | None = None
        self.heartbeat = 25.0
        self.subscribed = asyncio.Event()
        self.ws: ClientConnection | None = None
        self.fast: fastws.FastWebSocket | None = None
        self.nats = peerwire.NatsReader() if self.protocol is Protocol.NATS else None
        #: Answers (pongs, a subscribe) sent from the ``websockets`` client's reader, in flight.
        self._replies: set[asyncio.Future[None]] = set()

    @property
    def connected(self) -> bool:
        return self.ws is not None or self.fast is not None

    async def connect(self, url: str) -> None:
        subprotocol = self.protocol.subprotocol
        if self.load.client == "fast":
            parts = urlsplit(url)
            self.fast = await fastws.connect(
                parts.hostname or "127.0.0.1",
                parts.port or 80,
                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                self.on_message,
                subprotocol=subprotocol,
                open_timeout=10,
            )
            return
        self.ws = await connect(
            url,
            compression=None,
            subprotocols=[subprotocol] if subprotocol is not None else None,
            max_queue=_MAX_QUEUE,
            max_size=_MAX_SIZE,
            ping_interval=None,
            close_timeout=1,
            open_timeout=10,
            proxy=None,
        )

    async def send(self, frame: str | bytes) -> None:
        """Send one message; a closed connection is ignored (its reader reports it)."""
        if self.fast is not None:
            self.fast.send(frame)
        elif self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(frame)

    def on_message(self, frame: bytes, binary: bool = False) -> None:
        """Handle one received message (the fast client calls this from ``data_received``)."""
        now = time.time_ns()
        try:
            if self.protocol is Protocol.CHAT:
                self._on_chat(frame, now)
            elif self.nats is not None:
                self._on_nats(frame, now)
            elif self.protocol is Protocol.SOCKETIO:
                self._on_socketio(frame, now)
            else:
                self._on_v1(frame, now)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError):
            self.bad_frames += 1

    async def read(self) -> None:
        if self.fast is not None:
            try:
                self.closed = await self.fast.closed
            finally:
                self.warm.set()
            return
        ws = self.ws
        assert ws is not None
        try:
            while True:
                self.on_message(await ws.recv(decode=False))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else "no close frame"
            self.closed = f"closed {code}"
        except Exception as exc:  # a bug here must show up in the report, not stop reading
            self.closed = f"reader failed: {type(exc).__name__}: {exc}"
        finally:
            self.warm.set()

    def _on_chat(self, frame: bytes, now: int) -> None:
        payload = decode_chat(frame)
        if payload is not None:
            self._on_payload(payload, now, len(frame))

    def _on_nats(self, frame: bytes, now: int) -> None:
        assert self.nats is not None
        for kind, body in self.nats.feed(frame):
            if kind == b"MSG":
                self._on_payload(decode_payload(body), now, len(body))
            elif kind == b"PING":
                self._reply(peerwire.NATS_PONG)
            elif kind == b"PONG":
                self.subscribed.set()
            elif kind == b"-ERR":
                self.errors[f"nats:{body.decode(errors='replace')}"] += 1

    def _on_socketio(self, frame: bytes, now: int) -> None:
        payload = peerwire.socketio_message_payload(frame)
        if payload is not None:
            self._on_payload(decode_payload(payload), now, len(frame))
        elif frame == b"2":  # the server's ping
            self._reply(peerwire.SOCKETIO_PONG)
        elif frame.startswith(b"40"):  # joined the namespace: now the room
            self._reply(peerwire.socketio_subscribe(self.channel))
        elif frame.startswith(b"431"):  # the subscribe's ack
            self.subscribed.set()
        elif frame.startswith(b"44"):  # connect error
            self.errors["socketio:connect_error"] += 1

    def _reply(self, frame: str | bytes) -> None:
        """Answer from the frame callback (the fast client's send never waits)."""
        if self.fast is not None:
            self.fast.send(frame)
        elif self.ws is not None:
            task = asyncio.ensure_future(self.send(frame))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    def _on_v1(self, frame: bytes, now: int) -> None:
        messages = decode_v1_frame(self.protocol, frame)
        nbytes = len(frame) // max(1, len(messages))
        for message in messages:
            kind = message.type
            if kind == "message":
                if message.offset is not None:
                    if message.offset <= self.last_offset:
                        self.out_of_order += 1
                    self.last_offset = message.offset
                if message.data is not None:
                    self._on_payload(message.data, now, nbytes)
            elif kind == "subscribed":
                self.subscribed.set()
            elif kind == "welcome":
                if message.heartbeat:
                    self.heartbeat = message.heartbeat
            elif kind == "gap":
                self.gaps += 1
            elif kind in ("error", "disconnect"):
                self.errors[f"{kind}:{message.code}"] += 1

    def _on_payload(self, payload: Payload, now: int, nbytes: int) -> None:
        seq = payload.seq
        if seq < 0:
            self.warm.set()
            return
        if seq >= len(self.seen):
            self.unexpected += 1
            return
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        self.received += 1
        self.payload_bytes += nbytes
        if seq < self.last_seq:
            self.out_of_order += 1
        self.last_seq = seq
        self.latencies.append((now - payload.ts) // 1000)

    def owed(self, sent: int) -> int:
        """Publications of ``0 .. sent-1`` that belong to this client's channel."""
        return self.load.owed(self.position, sent)

    def complete(self, sent: int) -> bool:
        return self.received >= self.owed(sent) or self.closed is not None

    def close_later(self) -> asyncio.Future[None] | None:
        """Start the closing handshake (bounded to 1 s); None when not connected."""
        if self.fast is not None:
            return asyncio.ensure_future(self.fast.close(wait=1.0))
        if self.ws is not None:
            return asyncio.ensure_future(self.ws.close())
        return None

    def abort(self) -> None:
        if self.fast is not None:
            self.fast.abort()
        if self.ws is not None:
            self.ws.transport.abort()


async def _subscribe_all(clients: list[Subscriber]) -> None:
    for client in clients:
        await client.send(encode_subscribe(client.protocol, client.channel))
    await asyncio.gather(*(client.subscribed.wait() for client in clients))


async def _heartbeats(clients: list[Subscriber], chunk: int = 50) -> None:
    """Send ``ping`` often enough that no v1 client hits the heartbeat timeout.

    Each client pings once per 0.7 x heartbeat, the clients spread evenly over that interval
    (``chunk`` at a time): thousands of pings in one burst would make the server answer them all
    at once and delay whatever publication arrives meanwhile.
    """
    request = 1000
    interval = min(client.heartbeat for client in clients) * 0.7
    pause = interval / max(1, -(-len(clients) // chunk))
    while True:
        for first in range(0, len(clients), chunk):
            await asyncio.sleep(pause)
            for client in clients[first : first + chunk]:
                if client.connected and client.closed is None:
                    request += 1
                    await client.send(encode_ping(client.protocol, request))


async def _connect_all(spec: WorkerSpec) -> tuple[list[Subscriber], Ready]:
    url = spec.load.url
    gate = asyncio.Semaphore(spec.load.connect_concurrency)
    errors: list[str] = []

    async def one(position: int) -> Subscriber | None:
        client = Subscriber(spec, position)
        async with gate:
            try:
                await client.connect(url)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None
        return client

    async with asyncio.timeout(spec.load.connect_timeout):
        results = await asyncio.gather(
            *(one(spec.first + offset) for offset in range(spec.clients))
        )
    clients = [client for client in results if client is not None]
    return clients, Ready(len(clients), spec.clients - len(clients), tuple(errors[:5]))


async def _drain(clients: list[Subscriber], command: Drain) -> None:
    while time.time_ns() < command.deadline_ns:
        if all(client.complete(command.sent) for client in clients):
            return
        await asyncio.sleep(0.02)


def _report(index: int, clients: list[Subscriber], cpu: CpuUsage, sent: int) -> WorkerReport:
    latencies: array[int] = array("q")
    errors: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    for client in clients:
        latencies.extend(client.latencies)
        errors.update(client.errors)
        if client.closed is not None:
            closes[client.closed] += 1
    return WorkerReport(
        index=index,
        latencies_us=latencies.tobytes(),
        received=[client.received for client in clients],
        duplicates=sum(client.duplicates for client in clients),
        out_of_order=sum(client.out_of_order for client in clients),
        unexpected=sum(client.unexpected for client in clients),
        bad_frames=sum(client.bad_frames for client in clients),
        gaps=sum(client.gaps for client in clients),
        errors=errors,
        closes=closes,
        payload_bytes=sum(client.payload_bytes for client in clients),
        cpu=cpu,
        owed=[client.owed(sent) for client in clients],
    )


async def _close_all(clients: list[Subscriber], tasks: list[asyncio.Task[None]]) -> None:
    closers = [closer for c in clients if (closer := c.close_later()) is not None]
    if closers:
        await asyncio.wait(closers, timeout=1.0)
    for client in clients:
        client.abort()
    for task in [*tasks, *closers]:
        task.cancel()
    await asyncio.gather(*tasks, *closers, return_exceptions=True)


async def _announce_warm(clients: list[Subscriber], inbox: AsyncInbox) -> None:
    await asyncio.gather(*(client.warm.wait() for client in clients))
    inbox.send(Warm())


async def _main(spec: WorkerSpec, conn: Connection) -> None:
    inbox = AsyncInbox(conn)
    clock = CpuClock()
    clients: list[Subscriber] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        clients, ready = await _connect_all(spec)
        tasks = [asyncio.create_task(client.read()) for client in clients]
        if spec.load.protocol.channels and clients:
            async with asyncio.timeout(spec.load.connect_timeout):
                await _subscribe_all(clients)
        if spec.load.protocol.v1 and clients:
            tasks.append(asyncio.create_task(_heartbeats(clients)))
        inbox.send(ready)
        tasks.append(asyncio.create_task(_announce_warm(clients, inbox)))
        while True:
            command = await inbox.get()
            if isinstance(command, Go):
                clock.start()
            elif isinstance(command, Drain):
                await _drain(clients, command)
                inbox.send(_report(spec.index, clients, clock.usage(), command.sent))
            elif isinstance(command, Stop):
                break
    finally:
        await _close_all(clients, tasks)


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a subscriber worker process."""
    try:
        loop.run(lambda: _main(spec, conn))
    except (KeyboardInterrupt, TimeoutError):
        pass
