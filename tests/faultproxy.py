"""A fault-injecting TCP proxy for tests: network faults between a client and the broker, with
no special tooling (no tc, no iptables, no root).

    async with FaultProxy(running.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/v1/ws"      # clients connect through the proxy
        proxy.delay(0.2)                                 # every chunk waits 200 ms
        proxy.stall(Direction.DOWN)                      # the broker's bytes stop arriving
        proxy.resume()                                   # ... and flow again
        proxy.trickle(1, every=0.05, direction=Direction.UP)  # one byte per 50 ms
        proxy.cut()                                      # reset every connection now

Each accepted connection is relayed by two pumps, one per direction (``UP``: client to broker,
``DOWN``: broker to client). A stalled pump stops *reading*, so the sender's TCP window fills
and it sees real back-pressure, as behind a dead link. Faults apply to the connections open now
and to later ones. Everything runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType

from tests.conftest import TIMEOUT


class Direction(enum.Flag):
    NONE = 0
    UP = enum.auto()  # client to broker
    DOWN = enum.auto()  # broker to client
    BOTH = UP | DOWN


@dataclass
class _Faults:
    delay: float = 0.0
    stalled: Direction = Direction.NONE
    trickle_bytes: int = 0
    trickle_every: float = 0.0
    trickled: Direction = Direction.NONE
    resumed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Relay:
    """One client connection through the proxy."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    #: Bytes relayed so far, per direction.
    relayed: dict[Direction, int] = field(
        default_factory=lambda: {Direction.UP: 0, Direction.DOWN: 0}
    )


class FaultProxy:
    """See the module docstring."""

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, rcvbuf: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        #: SO_RCVBUF of the proxy's socket to the broker: small, so that a stall is felt soon
        #: rather than after the kernel has absorbed megabytes.
        self.rcvbuf = rcvbuf
        self.port = 0
        self.relays: list[Relay] = []
        self._faults = _Faults()
        self._server: asyncio.Server | None = None

    # --- faults ---------------------------------------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before relaying it (0: no delay)."""
        self._faults.delay = seconds

    def stall(self, direction: Direction = Direction.BOTH) -> None:
        """Stop relaying (and reading) in ``direction`` until ``resume``."""
        self._faults.stalled |= direction
        self._faults.resumed.clear()

    def resume(self) -> None:
        """Relay again in both directions, at full speed."""
        faults = self._faults
        faults.stalled = Direction.NONE
        faults.trickled = Direction.NONE
        faults.delay = 0.0
        faults.resumed.set()

    def trickle(self, size: int, *, every: float, direction: Direction = Direction.BOTH) -> None:
        """Relay at most ``size`` bytes per ``every`` seconds in ``direction``."""
        faults = self._faults
        faults.trickle_bytes, faults.trickle_every = size, every
        faults.trickled |= direction

    def cut(self) -> None:
        """Reset every open connection, on both sides, now (an RST, as when a link dies)."""
        for relay in self.relays:
            for pump in relay.pumps:
                pump.cancel()
            for writer in (relay.client, relay.upstream):
                _reset(writer)
        self.relays.clear()

    # --- running --------------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        self._faults.resumed.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        pumps = [pump for relay in self.relays for pump in relay.pumps]
        self.cut()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pumps, return_exceptions=True)
        async with asyncio.timeout(TIMEOUT):
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.target)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError:
            _reset(writer)
            return
        relay = Relay(writer, up_writer)
        self.relays.append(relay)
        relay.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, Direction.UP, relay)),
            asyncio.create_task(self._pump(up_reader, writer, Direction.DOWN, relay)),
        ]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        relay: Relay,
    ) -> None:
        faults = self._faults
        try:
            while True:
                while direction in faults.stalled:
                    await faults.resumed.wait()
                data = await reader.read(65536)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if faults.delay:
                    await asyncio.sleep(faults.delay)
                while data:
                    if direction in faults.trickled and faults.trickle_bytes:
                        piece, data = data[: faults.trickle_bytes], data[faults.trickle_bytes :]
                        await asyncio.sleep(faults.trickle_every)
                    else:
                        piece, data = data, b""
                    writer.write(piece)
                    await writer.drain()
                    relay.relayed[direction] += len(piece)
        except (OSError, asyncio.IncompleteReadError):
            # One side went away: take the other down the same way.
            _reset(relay.client)
            _reset(relay.upstream)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
