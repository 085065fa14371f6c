"""A generator process for the large-population scenarios: clients with a shared and a personal
channel, their sockets bound to one loopback source address.

Client ``i`` (counted over every process) subscribes on ``/v1/ws`` to the shared channel and to
its own channel ``<prefix>-<i>``. Broadcast ``k`` (to the shared channel) is owed to every
client; personal publication ``j`` goes to channel ``j % population`` (``personal_owed``). Each
client records, per kind, the latency of what it receives (receive time minus the publisher's
stamp), duplicates and order; what is still missing at the drain deadline is lost.

Every socket is bound to ``PersonalSpec.source`` (127.0.0.x) with ``IP_BIND_ADDRESS_NO_PORT``, so
the kernel picks the source port at connect time from the whole ephemeral range for that address:
one process's clients never exhaust the range (about 28,000 ports) shared by the others. A
connection refused (the server at ``limits.max_connections``: closed before its subscriptions
are confirmed) is retried after a pause, and can then land on another worker process.

Clients are ``benchmarks.fastws`` protocols (frames parsed in ``data_received``); each sends
``ping`` once per ``0.7 x heartbeat``, the clients spread evenly over that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from benchmarks import fastws
from benchmarks.generator import loop
from benchmarks.generator.control import AsyncInbox, CpuClock, CpuUsage, Go, Ready, Stop, Warm
from benchmarks.wire import WARMUP_SEQ, Protocol, decode_v1_frame, encode_ping, encode_subscribe

#: ``IP_BIND_ADDRESS_NO_PORT`` (Linux 4.2+): bind the address now, choose the port at connect.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_SHARED_ID = 1
_PERSONAL_ID = 2


def personal_channel(prefix: str, position: int) -> str:
    return f"{prefix}-{position}"


def personal_owed(position: int, population: int, sent: int) -> int:
    """How many of personal publications ``0 .. sent-1`` (``j`` to ``j % population``) are
    client ``position``'s."""
    if position >= sent:
        return 0
    return (sent - position + population - 1) // population


@dataclasses.dataclass(frozen=True)
class PersonalSpec:
    """One generator process: ``clients`` clients from ``first`` on, bound to ``source``."""

    index: int
    host: str
    port: int
    path: str
    protocol: Protocol
    source: str
    first: int
    clients: int
    population: int
    shared: str
    prefix: str
    #: Broadcasts the run can send at most (size of each client's seen-map).
    planned_broadcasts: int
    heartbeat: float = 25.0
    connect_concurrency: int = 50
    connect_timeout: float = 600.0
    attempts: int = 20
    open_timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class DrainAll:
    """Broadcasts ``0 .. broadcasts-1`` and personal ``0 .. personal-1`` were sent; wait for
    them until ``deadline_ns`` (wall clock)."""

    broadcasts: int
    personal: int
    deadline_ns: int


@dataclasses.dataclass
class PersonalReport:
    index: int
    connected: int
    #: Latencies in microseconds (``array('q')`` bytes): broadcasts, personal publications.
    broadcast_us: bytes
    personal_us: bytes
    broadcast_owed: int
    broadcast_lost: int
    personal_owed: int
    personal_lost: int
    duplicates: int
    out_of_order: int
    unexpected: int
    bad_frames: int
    errors: Counter[str]
    closes: Counter[str]
    cpu: CpuUsage


class Tally:
    """What every client of the process records into (one array per kind, not per client)."""

    def __init__(self) -> None:
        self.broadcast_us: array[int] = array("q")
        self.personal_us: array[int] = array("q")
        self.duplicates = 0
        self.out_of_order = 0
        self.unexpected = 0
        self.bad_frames = 0
        self.errors: Counter[str] = Counter()
        #: Clients not yet warm (got a warm-up broadcast, or closed); set when none is left.
        self.cold = 0
        self.all_warm = asyncio.Event()

    def warmed(self) -> None:
        self.cold -= 1
        if self.cold <= 0:
            self.all_warm.set()


class Client:
    """One connection's bookkeeping; slots keep 19,000 of them small."""

    __slots__ = (
        "acks",
        "broadcasts",
        "closed",
        "last_personal",
        "personal",
        "position",
        "seen",
        "spec",
        "subscribed",
        "tally",
        "warm",
        "ws",
    )

    def __init__(self, spec: PersonalSpec, position: int, tally: Tally) -> None:
        self.position = position
        self.spec = spec
        self.tally = tally
        self.ws: fastws.FastWebSocket | None = None
        self.seen = bytearray(spec.planned_broadcasts)
        self.broadcasts = 0
        self.personal = 0
        self.last_personal = -1
        self.acks = 0
        self.subscribed: asyncio.Future[None] | None = None
        self.warm = False
        self.closed: str | None = None

    def on_message(self, frame: bytes, binary: bool = False) -> None:
        now = time.time_ns()
        tally = self.tally
        try:
            messages = decode_v1_frame(self.spec.protocol, frame)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, ValueError):
            tally.bad_frames += 1
            return
        for message in messages:
            kind = message.type
            if kind == "message" and message.data is not None:
                seq = message.data.seq
                if seq == WARMUP_SEQ:
                    self.mark_warm()
                elif message.channel == self.spec.shared:
                    self._broadcast(seq, now - message.data.ts)
                else:
                    self._personal(seq, now - message.data.ts)
            elif kind == "subscribed":
                self.acks += 1
                if self.acks == 2 and self.subscribed is not None and not self.subscribed.done():
                    self.subscribed.set_result(None)
            elif kind in ("error", "disconnect"):
                tally.errors[f"{kind}:{message.code}"] += 1

    def mark_warm(self) -> None:
        if not self.warm:
            self.warm = True
            self.tally.warmed()

    def _broadcast(self, seq: int, latency_ns: int) -> None:
        if not 0 <= seq < len(self.seen):
            self.tally.unexpected += 1
        elif self.seen[seq]:
            self.tally.duplicates += 1
        else:
            self.seen[seq] = 1
            self.broadcasts += 1
            self.tally.broadcast_us.append(latency_ns // 1000)

    def _personal(self, seq: int, latency_ns: int) -> None:
        if seq < 0 or seq % self.spec.population != self.position:
            self.tally.unexpected += 1
        elif seq <= self.last_personal:
            self.tally.out_of_order += 1
        else:
            self.last_personal = seq
            self.personal += 1
            self.tally.personal_us.append(latency_ns // 1000)


async def _open(spec: PersonalSpec, client: Client) -> fastws.FastWebSocket:
    """A socket bound to the spec's source address, connected, handshaken."""
    loop_ = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setblocking(False)
        sock.bind((spec.source, 0))
        await loop_.sock_connect(sock, (spec.host, spec.port))
    except BaseException:
        sock.close()
        raise
    request, accept = fastws.handshake_request(
        spec.host, spec.port, spec.path, spec.protocol.subprotocol
    )
    subprotocol = spec.protocol.subprotocol
    transport, ws = await loop_.create_connection(
        lambda: fastws.FastWebSocket(request, accept, subprotocol, client.on_message), sock=sock
    )
    try:
        await ws.opened
    except BaseException:
        transport.abort()
        raise
    return ws


async def _join(spec: PersonalSpec, client: Client) -> None:
    """Connect and subscribe to both channels; raises when refused or closed meanwhile."""
    client.acks = 0
    client.subscribed = asyncio.get_running_loop().create_future()
    async with asyncio.timeout(spec.open_timeout):
        ws = await _open(spec, client)
        client.ws = ws
        try:
            ws.send(encode_subscribe(spec.protocol, spec.shared, _SHARED_ID))
            personal = personal_channel(spec.prefix, client.position)
            ws.send(encode_subscribe(spec.protocol, personal, _PERSONAL_ID))
            waits: list[asyncio.Future[Any]] = [client.subscribed, ws.closed]
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if client.subscribed not in done:
                raise ConnectionError(f"closed before subscribed: {ws.closed.result()}")
        except BaseException:
            ws.abort()
            client.ws = None
            raise


async def _connect_all(spec: PersonalSpec, tally: Tally, clients: list[Client]) -> Ready:
    """Connect and subscribe every client, appending each to ``clients`` once it is in."""
    gate = asyncio.Semaphore(spec.connect_concurrency)
    errors: Counter[str] = Counter()

    async def one(position: int) -> bool:
        client = Client(spec, position, tally)
        for attempt in range(spec.attempts):
            async with gate:
                try:
                    await _join(spec, client)
                    clients.append(client)
                    return True
                except (OSError, TimeoutError, fastws.HandshakeFailed) as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            await asyncio.sleep(min(5.0, 0.2 * (attempt + 1)))
        return False

    tasks = [asyncio.ensure_future(one(spec.first + i)) for i in range(spec.clients)]
    # Past the timeout the run goes on with the clients that are in (reported as such).
    _, pending = await asyncio.wait(tasks, timeout=spec.connect_timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        errors[f"connect timeout ({spec.connect_timeout:g} s): {len(pending)} not connected"] += 1
    top = tuple(f"{count} x {what}" for what, count in errors.most_common(5))
    # Those still open: a client whose worker died since it joined is in no more.
    alive = sum(1 for client in clients if client.ws is not None and not client.ws.closed.done())
    return Ready(alive, spec.clients - alive, top)


async def _heartbeats(spec: PersonalSpec, clients: list[Client], chunk: int = 50) -> None:
    """``ping`` from each client once per ``0.7 x heartbeat``, ``chunk`` clients at a time.

    It runs from the first connection on (``clients`` grows while the others connect: with
    thousands to open, the first would otherwise be closed for silence before the last is in).
    """
    request = 1000
    interval = spec.heartbeat * 0.7
    pause = interval / max(1, -(-spec.clients // chunk))
    while True:
        await asyncio.sleep(pause)  # at least one pause per round, even with no client yet
        for first in range(0, len(clients), chunk):
            await asyncio.sleep(pause)
            for client in clients[first : first + chunk]:
                if client.ws is not None and not client.ws.closed.done():
                    request += 1
                    client.ws.send(encode_ping(spec.protocol, request))


async def _watch_closes(clients: list[Client]) -> None:
    async def one(client: Client) -> None:
        assert client.ws is not None
        client.closed = await client.ws.closed
        client.mark_warm()

    await asyncio.gather(*(one(client) for client in clients))


async def _until_warm(tally: Tally, inbox: AsyncInbox) -> None:
    await tally.all_warm.wait()
    inbox.send(Warm())


def _complete(spec: PersonalSpec, client: Client, command: DrainAll) -> bool:
    if client.closed is not None:
        return True
    owed = personal_owed(client.position, spec.population, command.personal)
    return client.broadcasts >= command.broadcasts and client.personal >= owed


async def _drain(spec: PersonalSpec, clients: list[Client], command: DrainAll) -> None:
    while time.time_ns() < command.deadline_ns:
        if all(_complete(spec, client, command) for client in clients):
            return
        await asyncio.sleep(0.1)


def _report(
    spec: PersonalSpec, clients: list[Client], tally: Tally, command: DrainAll, cpu: CpuUsage
) -> PersonalReport:
    broadcast_owed = command.broadcasts * len(clients)
    personal_total = sum(
        personal_owed(c.position, spec.population, command.personal) for c in clients
    )
    broadcasts = sum(min(c.broadcasts, command.broadcasts) for c in clients)
    personal = sum(
        min(c.personal, personal_owed(c.position, spec.population, command.personal))
        for c in clients
    )
    closes = Counter(client.closed for client in clients if client.closed is not None)
    return PersonalReport(
        index=spec.index,
        connected=len(clients),
        broadcast_us=tally.broadcast_us.tobytes(),
        personal_us=tally.personal_us.tobytes(),
        broadcast_owed=broadcast_owed,
        broadcast_lost=broadcast_owed - broadcasts,
        personal_owed=personal_total,
        personal_lost=personal_total - personal,
        duplicates=tally.duplicates,
        out_of_order=tally.out_of_order,
        unexpected=tally.unexpected,
        bad_frames=tally.bad_frames,
        errors=tally.errors,
        closes=closes,
        cpu=cpu,
    )


async def _main(spec: PersonalSpec, conn: Connection) -> None:
    inbox = AsyncInbox(conn)
    tally = Tally()
    clock = CpuClock()
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(_heartbeats(spec, clients))]
    try:
        ready = await _connect_all(spec, tally, clients)
        tasks.append(asyncio.create_task(_watch_closes(clients)))
        inbox.send(ready)
        tally.cold = sum(1 for client in clients if not client.warm)
        if tally.cold <= 0:
            tally.all_warm.set()
        tasks.append(asyncio.create_task(_until_warm(tally, inbox)))
        while True:
            command = await inbox.get()
            if isinstance(command, Go):
                clock.start()
            elif isinstance(command, DrainAll):
                await _drain(spec, clients, command)
                inbox.send(_report(spec, clients, tally, command, clock.usage()))
            elif isinstance(command, Stop):
                break
    finally:
        for client in clients:
            if client.ws is not None:
                client.ws.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def personal_main(spec: PersonalSpec, conn: Connection) -> None:
    """Entry point of a generator process."""
    with contextlib.suppress(KeyboardInterrupt, TimeoutError):
        loop.run(lambda: _main(spec, conn))
