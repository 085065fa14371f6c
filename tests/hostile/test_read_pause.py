"""When the server stops reading a client: only when the app is behind with its messages (one
arrives while the one before is still unread), not after every message as uvicorn does. Each
pause and resume is an epoll change, a system call NATS does not make per message; a client the
app keeps up with costs none, and one that floods still meets a server that stops reading."""

from __future__ import annotations

from typing import Any

import pytest

from broker.connection import Connection
from protocol import JSON, Ping, Pong
from tests.conftest import serve_broker
from tests.rawclient import masked_frame, open_raw, read_frames
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


class CountingTransport:
    """The server side's transport, counting ``pause_reading`` calls."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1
        self._transport.pause_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counting(connection: Connection) -> CountingTransport:
    assert connection.link is not None
    protocol = connection.link._protocol
    counter = CountingTransport(protocol.transport)
    protocol.transport = counter  # type: ignore[assignment]
    return counter


async def test_a_client_the_app_keeps_up_with_is_read_without_pauses() -> None:
    async with serve_broker() as running:
        async with open_client(running.url()) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)
            (side,) = running.broker.connections.values()
            transport = counting(side)
            for n in range(2, 52):
                await client.send(Ping(id=n))
                assert await client.expect(Pong) == Pong(id=n)
            assert transport.pauses == 0


def pongs(frames: list[tuple[int, bytes]]) -> list[Pong]:
    return [m for _, data in frames for m in JSON.decode_server(data) if isinstance(m, Pong)]


async def test_a_burst_the_app_is_behind_with_pauses_reading_and_every_message_is_answered() -> (
    None
):
    async with serve_broker() as running:
        raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
        try:
            await raw.send(masked_frame(JSON.encode_client(Ping(id=1))))
            assert pongs(await read_frames(raw, idle=0.5)) == [Pong(id=1)]
            (side,) = running.broker.connections.values()
            transport = counting(side)
            # 200 pings in one write: they arrive together, the app behind after the first.
            await raw.send(
                b"".join(masked_frame(JSON.encode_client(Ping(id=n))) for n in range(2, 202))
            )
            assert pongs(await read_frames(raw, idle=0.5)) == [Pong(id=n) for n in range(2, 202)]
            assert transport.pauses >= 1
        finally:
            raw.reset()
