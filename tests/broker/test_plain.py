"""The tutorial's plain endpoints ``/ws``, ``/ws/data`` and ``/ws/chat`` (docs/protocol.md §3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from broker.settings import QueueSettings, Settings, WebSocketSettings
from tests.conftest import TIMEOUT, RunningBroker, serve_broker

pytestmark = pytest.mark.anyio

LEFT = "A client has left the chat."


@asynccontextmanager
async def plain(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with connect(url, compression=None, open_timeout=TIMEOUT, **kwargs) as ws:
        yield ws


async def recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


# --- /ws ----------------------------------------------------------------------------------------


async def test_echo_answers_each_text_frame_with_echo_prefix(running: RunningBroker) -> None:
    async with plain(running.url("/ws")) as ws:
        for text in ["hello", "", "héllo, 世界 ✓", "Echo: nested", "  spaced  "]:
            await ws.send(text)
            assert await recv(ws) == f"Echo: {text}"


async def test_echo_keeps_the_order_of_many_frames(running: RunningBroker) -> None:
    async with plain(running.url("/ws")) as ws:
        for i in range(100):
            await ws.send(str(i))
        assert [await recv(ws) for _ in range(100)] == [f"Echo: {i}" for i in range(100)]


async def test_echo_clients_do_not_hear_each_other(running: RunningBroker) -> None:
    async with plain(running.url("/ws")) as a, plain(running.url("/ws")) as b:
        await a.send("from a")
        await b.send("from b")
        assert await recv(a) == "Echo: from a"
        assert await recv(b) == "Echo: from b"


# --- /ws/data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['{"temperature": 21.5}', "[1, 2, 3]", "42", '"a string"', "null", '{"nested": {"a": []}}'],
)
async def test_data_acknowledges_json_text_with_status_received(
    running: RunningBroker, text: str
) -> None:
    async with plain(running.url("/ws/data")) as ws:
        await ws.send(text)
        reply = await recv(ws)
        assert isinstance(reply, str)
        assert json.loads(reply) == {"status": "received"}


@pytest.mark.parametrize(
    "data", [b"\x00\x01\x02\xff\xfe", b"", bytes(range(256)) * 40, b'{"looks": "like json"}']
)
async def test_data_sends_a_binary_frame_back_unchanged(
    running: RunningBroker, data: bytes
) -> None:
    async with plain(running.url("/ws/data")) as ws:
        await ws.send(data)
        reply = await recv(ws)
        assert isinstance(reply, bytes), "a binary frame must come back as a binary frame"
        assert reply == data


@pytest.mark.parametrize("text", ["not json", "{", "{'single': 'quotes'}", "[1, 2,]", "[" * 10_000])
async def test_data_answers_non_json_text_with_an_error_and_stays_open(
    running: RunningBroker, text: str
) -> None:
    async with plain(running.url("/ws/data")) as ws:
        await ws.send(text)
        reply = await recv(ws)
        assert isinstance(reply, str)
        error = json.loads(reply)
        assert error["status"] == "error"
        assert isinstance(error["detail"], str) and error["detail"]
        assert "Traceback" not in error["detail"]
        await ws.send('{"still": "here"}')
        assert json.loads(await recv(ws)) == {"status": "received"}


# --- /ws/chat -----------------------------------------------------------------------------------


class Chat:
    """Chat clients, each known to have joined the room."""

    def __init__(self, url: str, stack: AsyncExitStack) -> None:
        self.url = url
        self.stack = stack
        self.members: list[ClientConnection] = []

    async def join(self, name: str, **kwargs: Any) -> ClientConnection:
        """Connect ``name`` and wait until the room has it: its own first line comes back to it
        (a client's frames are handled in order, after its join) and to everyone already in."""
        ws = await self.stack.enter_async_context(plain(self.url, **kwargs))
        await ws.send(f"{name} here")
        for member in [*self.members, ws]:
            assert await recv(member) == f"Client says: {name} here"
        self.members.append(ws)
        return ws


@asynccontextmanager
async def chat(running: RunningBroker) -> AsyncIterator[Chat]:
    async with AsyncExitStack() as stack:
        yield Chat(running.url("/ws/chat"), stack)


async def test_chat_sends_each_line_to_every_client_sender_included(
    running: RunningBroker,
) -> None:
    async with chat(running) as room:
        a, b, c = [await room.join(name) for name in "abc"]
        await b.send("hello, everyone")
        for ws in (a, b, c):
            assert await recv(ws) == "Client says: hello, everyone"


async def test_chat_keeps_each_senders_order(running: RunningBroker) -> None:
    async with chat(running) as room:
        a, b = [await room.join(name) for name in "ab"]
        for i in range(50):
            await a.send(f"line {i}")
        expected = [f"Client says: line {i}" for i in range(50)]
        for ws in (a, b):
            assert [await recv(ws) for _ in range(50)] == expected


async def test_chat_tells_the_others_when_a_client_leaves(running: RunningBroker) -> None:
    async with chat(running) as room:
        a, b, c = [await room.join(name) for name in "abc"]
        await b.close()
        for ws in (a, c):
            assert await recv(ws) == LEFT
        # The room goes on without b.
        await a.send("still here?")
        for ws in (a, c):
            assert await recv(ws) == "Client says: still here?"


async def test_chat_room_is_separate_from_echo_and_data(running: RunningBroker) -> None:
    async with chat(running) as room, plain(running.url("/ws")) as echo:
        a = await room.join("a")
        await echo.send("not for the chat")
        assert await recv(echo) == "Echo: not for the chat"
        await a.send("ping")
        assert await recv(a) == "Client says: ping"


async def test_a_chat_client_that_stops_reading_does_not_hold_the_others_back() -> None:
    # The stalled client's kernel buffers absorb ~3-4 MB (docs/stack-findings.md) before the
    # server's writer waits; past that, its 64 KiB outbox overflows at once.
    settings = Settings(
        queue=QueueSettings(max_messages=64, max_bytes=64 * 1024),
        websocket=WebSocketSettings(max_message_bytes=128 * 1024),
    )
    line_size, lines = 60_000, 150  # 9 MB to each client
    async with serve_broker(settings) as running, chat(running) as room:
        a = await room.join("a")
        b = await room.join("b")
        # max_queue=1: the client library stops reading the socket after one unread frame.
        stalled = await room.join("stalled", max_queue=1)
        room.members.remove(stalled)
        left_seen = {a: 0, b: 0}
        for i in range(lines):
            line = f"{i:06d}" + "x" * line_size
            await a.send(line)
            for ws in (a, b):
                # Read in step with the sender, so that the healthy clients never lag.
                reply = await recv(ws)
                if reply == LEFT:
                    left_seen[ws] += 1
                    reply = await recv(ws)
                assert reply == f"Client says: {line}"
        # Every line reached both healthy clients, and they were told the stalled one was gone.
        assert left_seen == {a: 1, b: 1}
        assert running.broker.hub.subscriber_count("#chat") == 2

        # Once it reads again, the stalled client finds an in-order prefix of the lines, then the
        # end: its socket took nothing more when it was dropped, so the server reset it rather
        # than hold its buffers for a close frame it could not send (a 4008 close frame is sent
        # when the socket still takes one).
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                reply = await recv(stalled)
                assert reply == f"Client says: {received:06d}" + "x" * line_size
                received += 1
        assert 0 < received < lines
        assert closed.value.rcvd is None or closed.value.rcvd.code == 4008
