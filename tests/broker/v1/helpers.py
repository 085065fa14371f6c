"""What the ``/v1/ws`` tests share: one broker per module for the cases that leave no state
behind (the ``shared`` fixture), and clients that subscribe, publish and read."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from protocol import (
    Encoding,
    Error,
    Ping,
    Pong,
    Publish,
    Published,
    ServerMessage,
    Subscribe,
    Subscribed,
)
from tests.conftest import TIMEOUT, RunningBroker
from tests.wsclient import ProtocolClient, open_client

ENCODINGS = pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])

#: What must never leak into an ``error`` message: a traceback or a source location.
LEAK = re.compile(r'Traceback|File "|\.py\b|site-packages')


def raw(client: ProtocolClient, value: Any) -> msgspec.Raw:
    """``value`` as a payload in ``client``'s encoding."""
    encode = msgspec.json.encode if client.codec.text else msgspec.msgpack.encode
    return msgspec.Raw(encode(value))


async def subscribe(client: ProtocolClient, channel: str, request_id: int = 1) -> Subscribed:
    await client.send(Subscribe(id=request_id, channel=channel))
    reply = await client.expect(Subscribed)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def publish(client: ProtocolClient, channel: str, value: Any, request_id: int) -> Published:
    await client.send(Publish(id=request_id, channel=channel, data=raw(client, value)))
    reply = await client.expect(Published)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def assert_alive(client: ProtocolClient, request_id: int = 4242) -> None:
    """The connection still answers, and nothing else was queued for it before the pong."""
    await client.send(Ping(id=request_id))
    assert await client.recv() == Pong(id=request_id)


async def messages_until_closed(client: ProtocolClient) -> tuple[list[ServerMessage], int]:
    """Every message the client gets until the server closes, and the close code."""
    received: list[ServerMessage] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                received.append(await client.recv())
    assert closed.value.rcvd is not None, "closed without a close frame"
    return received, closed.value.rcvd.code


@asynccontextmanager
async def clients(
    running: RunningBroker, *encodings: Encoding
) -> AsyncIterator[list[ProtocolClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(running.url(), e)) for e in encodings]


def assert_bad_request(error: Error, request_id: int | None) -> None:
    assert error.code == "bad_request"
    assert error.id == request_id
    assert error.message
    assert not LEAK.search(error.message), error.message
