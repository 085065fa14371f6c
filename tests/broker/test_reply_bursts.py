"""Frames made in one turn of the loop, more than an outbox holds: a client that reads gets them
all. One read can bring thousands of small requests, each answered at once (a ``pong``, a
refusal), or a publisher's burst, fanned out at once to every subscriber. An outbox writes
through once half full (``Outbox.offer``), or, without the transport's link (plain uvicorn), the
reader whose message fed it lets the writers run (``WRITERS_BEHIND``, ``Reader.receive_loop``).
Only a client that does not read is dropped (tests/hostile/test_replies.py)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from broker.app import create_app
from broker.settings import QueueSettings, Settings
from protocol import (
    CODECS,
    Encoding,
    Ping,
    Pong,
    Publication,
    Publish,
    ServerMessage,
    Subscribe,
    Subscribed,
    Welcome,
)
from tests.broker.test_dependencies import serve_app
from tests.conftest import TIMEOUT, serve_broker
from tests.rawclient import RawClient, masked_frame, open_raw

pytestmark = pytest.mark.anyio

JSON = CODECS[Encoding.JSON]
OUTBOX = 20
PINGS = 200


@asynccontextmanager
async def serve_broker_port(settings: Settings) -> AsyncIterator[int]:
    async with serve_broker(settings) as running:
        yield running.port


@asynccontextmanager
async def serve_plain_uvicorn(settings: Settings) -> AsyncIterator[int]:
    """The broker's app under uvicorn's own WebSocket protocol (as ``uvicorn app:app`` in a host
    application): no transport link, so the writer is a task and nothing writes through."""
    async with serve_app(create_app(settings), ws="websockets-sansio") as address:
        yield int(address.rsplit(":", 1)[1])


SERVERS: dict[str, Callable[[Settings], AbstractAsyncContextManager[int]]] = {
    "broker-serve": serve_broker_port,
    "plain-uvicorn": serve_plain_uvicorn,
}


async def read_messages(client: RawClient, wanted: int) -> tuple[list[ServerMessage], int | None]:
    """Read server messages until ``wanted`` came, or a close frame, or the socket closes
    (bounded by ``TIMEOUT``). Returns them and the close code, if a close frame came."""
    loop = asyncio.get_running_loop()
    buffer = b""
    messages: list[ServerMessage] = []
    async with asyncio.timeout(TIMEOUT):
        while len(messages) < wanted:
            chunk = await loop.sock_recv(client.sock, 1 << 16)
            if not chunk:
                return messages, 1006
            buffer += chunk
            while len(buffer) >= 2:
                length, header = buffer[1] & 0x7F, 2
                if length == 126:
                    (length,) = struct.unpack_from("!H", buffer, 2)
                    header = 4
                elif length == 127:
                    (length,) = struct.unpack_from("!Q", buffer, 2)
                    header = 10
                if len(buffer) < header + length:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[header : header + length]
                buffer = buffer[header + length :]
                if opcode == 0x8:
                    return messages, struct.unpack("!H", payload[:2])[0] if payload else 1005
                if opcode == 0x1:
                    messages += JSON.decode_server(payload)
    return messages, None


@pytest.mark.parametrize("server", SERVERS)
async def test_a_client_that_reads_gets_every_pong_of_a_burst_ten_times_its_outbox(
    server: str,
) -> None:
    """200 pings in one write, an outbox of 20: 200 pongs in order, and the connection stays.
    Before the fix the replies of the turn waited for the flush after it, and the 21st dropped
    the client with 4008."""
    settings = Settings(queue=QueueSettings(max_messages=OUTBOX))
    async with SERVERS[server](settings) as port:
        client = await open_raw(port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=1 << 20)
        try:
            (welcome,), _ = await read_messages(client, 1)
            assert isinstance(welcome, Welcome)
            burst = b"".join(
                masked_frame(JSON.encode_client(Ping(id=i)), opcode=0x1)
                for i in range(1, PINGS + 1)
            )
            await client.send(burst)
            pongs, closed = await read_messages(client, PINGS)
            assert closed is None, f"closed with {closed} after {len(pongs)} pongs"
            assert pongs == [Pong(id=i) for i in range(1, PINGS + 1)]
            # Still open: one more ping, one more pong.
            await client.send(masked_frame(JSON.encode_client(Ping(id=0)), opcode=0x1))
            assert await read_messages(client, 1) == ([Pong(id=0)], None)
        finally:
            client.reset()


@pytest.mark.parametrize("server", SERVERS)
async def test_a_subscriber_that_reads_gets_every_publication_of_a_burst_ten_times_its_outbox(
    server: str,
) -> None:
    """200 publishes in one write, fanned out in one turn to a subscriber whose outbox holds 20:
    it gets all 200, in order, and stays connected. Before the fix the burst waited for the
    flush after the turn, and the 21st dropped the subscriber with 4008."""
    settings = Settings(queue=QueueSettings(max_messages=OUTBOX))
    async with SERVERS[server](settings) as port:
        subscriber = await open_raw(port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=1 << 20)
        publisher = await open_raw(port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=1 << 20)
        try:
            for client in (subscriber, publisher):
                (welcome,), _ = await read_messages(client, 1)
                assert isinstance(welcome, Welcome)
            await subscriber.send(
                masked_frame(JSON.encode_client(Subscribe(id=1, channel="burst")), opcode=0x1)
            )
            (subscribed,), _ = await read_messages(subscriber, 1)
            assert isinstance(subscribed, Subscribed)
            burst = b"".join(
                masked_frame(
                    JSON.encode_client(
                        Publish(channel="burst", data=JSON.encode_payload({"n": n}))
                    ),
                    opcode=0x1,
                )
                for n in range(1, PINGS + 1)
            )
            await publisher.send(burst)
            received, closed = await read_messages(subscriber, PINGS)
            assert closed is None, f"closed with {closed} after {len(received)} messages"
            assert [
                JSON.decode_payload(m.data) for m in received if isinstance(m, Publication)
            ] == [{"n": n} for n in range(1, PINGS + 1)]
            # Still subscribed and open: one more.
            await publisher.send(
                masked_frame(
                    JSON.encode_client(Publish(channel="burst", data=JSON.encode_payload("last"))),
                    opcode=0x1,
                )
            )
            ((last,), closed) = await read_messages(subscriber, 1)
            assert isinstance(last, Publication) and JSON.decode_payload(last.data) == "last"
        finally:
            subscriber.reset()
            publisher.reset()
