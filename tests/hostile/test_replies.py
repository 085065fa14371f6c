"""Replies that cannot leave: pongs (and every other reply) count against the outbox's bounds,
and a client that keeps sending while they cannot leave is dropped as a slow consumer."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from broker.settings import QueueSettings, Settings
from protocol import CODECS, Encoding, Ping
from tests.conftest import TIMEOUT, serve_broker, wait_until
from tests.hostile.rawhttp import MiB, rss
from tests.rawclient import masked_frame, open_raw, server_holds

pytestmark = pytest.mark.anyio

#: What the in-process server may grow by while it is flooded: the transport's buffer (64 KiB),
#: the kernel's, the outbox (bounded) and the allocator's slack. Without the bound, 64 MiB of
#: pings grew it by about as much.
RSS_BOUND = 24 * MiB


async def flood(send: object, chunk: bytes, total: int) -> int:
    """Send ``chunk`` until ``total`` bytes went out or the server cut the connection."""
    sent = 0
    assert callable(send)
    while sent < total:
        try:
            await send(chunk)
        except OSError:
            break
        sent += len(chunk)
    return sent


async def test_pings_from_a_client_that_does_not_read_are_bounded_and_it_is_dropped() -> None:
    async with serve_broker(Settings(queue=QueueSettings(max_messages=100))) as running:
        client = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=4096)
        pings = masked_frame(b"p" * 125, opcode=0x9) * 8000  # about 1 MiB of 125-byte pings
        before = rss()
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(TIMEOUT * 3):
                sent = await flood(client.send, pings, 64 * MiB)
            grown = rss() - before
            await wait_until(lambda: not server_holds(running.port, client.local_port))
        client.reset()
        assert sent < 64 * MiB, "the server read 64 MiB of pings and never cut the client"
        assert grown < RSS_BOUND, f"RSS grew by {grown / MiB:.1f} MiB"
        slow = [e for e in logs if e["event"] == "connection.slow_consumer"]
        assert [e["cause"] for e in slow] == ["replies_blocked"]
        await wait_until(lambda: not running.broker.connections)


async def test_requests_whose_replies_cannot_leave_drop_the_client_as_a_slow_consumer() -> None:
    async with serve_broker(Settings(queue=QueueSettings(max_messages=100))) as running:
        client = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=4096)
        codec = CODECS[Encoding.JSON]
        burst = b"".join(
            masked_frame(codec.encode_client(Ping(id=i)), opcode=0x1) for i in range(5000)
        )
        before = rss()
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(TIMEOUT * 3):
                sent = await flood(client.send, burst, 64 * MiB)
            grown = rss() - before
            await wait_until(lambda: not server_holds(running.port, client.local_port))
        client.reset()
        assert sent < 64 * MiB
        assert grown < RSS_BOUND, f"RSS grew by {grown / MiB:.1f} MiB"
        assert any(e["event"] == "connection.slow_consumer" for e in logs)
        closed = [e for e in logs if e["event"] == "connection.closed"]
        assert [e["code"] for e in closed] == [4008]


async def test_a_client_that_pings_and_reads_gets_every_pong() -> None:
    from websockets.asyncio.client import connect

    async with serve_broker() as running:
        async with connect(running.url(), open_timeout=TIMEOUT) as ws:
            for _ in range(50):
                waiter = await ws.ping()
                async with asyncio.timeout(TIMEOUT):
                    await waiter
