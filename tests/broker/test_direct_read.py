"""The reader's direct path (``TransportLink.messages``): under the broker's own server a
connection's reader takes client frames from the protocol's queue instead of through the ASGI
``receive``; with a middleware that wraps ``receive``, every frame still goes through it. Either
way a burst of frames read at once is answered whole (reading from the socket pauses with each
message queued and resumes once the reader has taken them all), and a client's close ends the
connection with its ``WebSocket`` disconnected, as Starlette's ``receive`` leaves it."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketState

from broker.app import create_app
from broker.connection import Connection
from broker.settings import Settings
from broker.transport import BrokerWebSocketProtocol
from protocol import JSON, Ping, Pong
from tests.conftest import RunningBroker, serve_broker, wait_until
from tests.rawclient import close_frame, masked_frame, open_raw, read_frames

pytestmark = pytest.mark.anyio

#: Pings sent in one write: the server reads them in one ``data_received``.
BURST = 20


@pytest.fixture
def receive_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the messages the protocol's ASGI ``receive`` hands out, by type."""
    counts: Counter[str] = Counter()
    receive = BrokerWebSocketProtocol.receive

    async def counting_receive(self: BrokerWebSocketProtocol) -> Any:
        message = await receive(self)
        counts[message["type"]] += 1
        return message

    monkeypatch.setattr(BrokerWebSocketProtocol, "receive", counting_receive)
    yield counts


class WrappingMiddleware:
    """Pure ASGI middleware that wraps a WebSocket's ``receive`` and counts the messages that
    go through it."""

    def __init__(self, app: ASGIApp, counts: Counter[str]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def counting_receive() -> Message:
            message = await receive()
            self.counts[message["type"]] += 1
            return message

        await self.app(scope, counting_receive, send)


async def pings_answered_then_closed(running: RunningBroker) -> Connection:
    """Send ``BURST`` pings in one write, check every one is answered, then close; the
    connection, once the broker has let it go."""
    raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json")
    await wait_until(lambda: len(running.broker.connections) == 1)
    (connection,) = running.broker.connections.values()
    pings = [masked_frame(JSON.encode_client(Ping(id=i))) for i in range(1, BURST + 1)]
    await raw.send(b"".join(pings))
    pongs: list[int | None] = []
    while len(pongs) < BURST:
        frames = await read_frames(raw, idle=0.5)
        assert frames, f"only {len(pongs)} of {BURST} pings answered"
        for opcode, payload in frames:
            assert opcode == 0x1
            pongs += [m.id for m in JSON.decode_server(payload) if isinstance(m, Pong)]
    assert pongs == list(range(1, BURST + 1))
    await raw.send(close_frame(1000))
    await wait_until(lambda: not running.broker.connections)
    raw.reset()
    assert connection.close_code == 1000
    return connection


async def test_under_the_broker_server_the_reader_takes_frames_from_the_protocol(
    receive_calls: Counter[str],
) -> None:
    async with serve_broker() as running:
        connection = await pings_answered_then_closed(running)
    # The ASGI ``receive`` handed out ``websocket.connect`` only (to ``accept``).
    assert receive_calls == Counter({"websocket.connect": 1})
    assert connection.websocket.client_state is WebSocketState.DISCONNECTED


@pytest.fixture
async def wrapped() -> AsyncIterator[tuple[RunningBroker, Counter[str]]]:
    counts: Counter[str] = Counter()
    app = create_app(Settings())
    app.add_middleware(WrappingMiddleware, counts=counts)
    async with serve_broker(app=app) as running:
        yield running, counts


async def test_a_middleware_wrapping_receive_sees_every_frame(
    wrapped: tuple[RunningBroker, Counter[str]], receive_calls: Counter[str]
) -> None:
    running, counts = wrapped
    connection = await pings_answered_then_closed(running)
    expected = Counter({"websocket.connect": 1, "websocket.receive": BURST})
    expected["websocket.disconnect"] = 1
    assert counts == expected
    assert receive_calls == expected
    assert connection.websocket.client_state is WebSocketState.DISCONNECTED
