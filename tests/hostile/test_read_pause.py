"""When the server stops reading a client: only when the app is behind with its messages (one
arrives while the one before is still unread), not after every message as uvicorn does. Each
pause and resume is an epoll change, a system call NATS does not make per message; a client the
app keeps up with costs none, and one that floods with requests that must wait still meets a
server that stops reading. (Pings and publishes that need no wait are answered as they are read,
in the protocol's callback: nothing queues for them, and a client that does not read its answers
is dropped as a slow consumer, 4008.)"""

from __future__ import annotations

from typing import Any

import pytest

from broker.connection import Connection
from protocol import JSON, Ping, Pong, Subscribe, Subscribed
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
            # A subscribe, then 200 pings, in one write: they arrive together. The subscribe
            # goes through the reader's task (the hub's mailbox): the app is behind from the
            # first ping on, which would otherwise have been answered at once, in the protocol's
            # callback (tests/broker/test_taken_at_once.py).
            await raw.send(
                masked_frame(JSON.encode_client(Subscribe(id=1, channel="news")))
                + b"".join(masked_frame(JSON.encode_client(Ping(id=n))) for n in range(2, 202))
            )
            frames = await read_frames(raw, idle=0.5)
            replies = [m for _, data in frames for m in JSON.decode_server(data)]
            assert isinstance(replies[0], Subscribed)
            assert replies[1:] == [Pong(id=n) for n in range(2, 202)]
            assert transport.pauses >= 1
        finally:
            raw.reset()
