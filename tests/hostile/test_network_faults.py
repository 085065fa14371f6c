"""Network faults between a client and the broker, injected by ``tests.faultproxy``: a link that
trickles, stalls or dies. The broker lets go of what it cannot serve within its deadlines, and the
client reconnects and recovers every publication, exactly once, in order."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from broker.client import Backoff, Message, Subscription, connect
from broker.settings import (
    NamespaceSettings,
    QueueSettings,
    ServerSettings,
    Settings,
    WebSocketSettings,
)
from broker.sockets import tally_for
from protocol import Ping, Pong
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.faultproxy import Direction, FaultProxy
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

FAST = Backoff(base=0.01, cap=0.1)
HISTORY = {"h": NamespaceSettings(history_size=100_000)}


def through(proxy: FaultProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/v1/ws"


def sockets_open(running: RunningBroker) -> int:
    return tally_for(running.server.server_state).total


async def test_a_handshake_trickling_in_is_cut_at_the_deadline_and_a_normal_one_goes_on() -> None:
    settings = Settings(server=ServerSettings(handshake_timeout=1.0))
    async with serve_broker(settings) as running, FaultProxy(running.port) as proxy:
        proxy.trickle(1, every=0.05, direction=Direction.UP)
        started = asyncio.get_running_loop().time()
        with pytest.raises((InvalidStatus, InvalidMessage, OSError)) as refused:
            async with ws_connect(through(proxy), open_timeout=TIMEOUT):
                pass
        if isinstance(refused.value, InvalidStatus):
            assert refused.value.response.status_code == 408
        assert asyncio.get_running_loop().time() - started < 1.0 + TIMEOUT / 2
        await wait_until(lambda: sockets_open(running) == 0)
        proxy.resume()
        async with open_client(through(proxy)) as client:
            await client.send(Ping(id=1))
            await client.expect(Pong)


async def receive_all(sub: Subscription[Message], last: int, into: list[int]) -> None:
    async for message in sub:
        into.append(message.offset)
        if message.offset >= last:
            return


async def test_a_subscriber_behind_a_stalled_link_is_dropped_and_recovers_once_it_returns() -> None:
    settings = Settings(
        namespaces=HISTORY,
        websocket=WebSocketSettings(write_timeout=1.0),
        queue=QueueSettings(max_messages=50),
    )
    async with (
        serve_broker(settings) as running,
        FaultProxy(running.port, rcvbuf=4096) as proxy,
        connect(through(proxy), backoff=FAST) as subscriber,
        connect(running.url()) as publisher,
    ):
        sub = await subscriber.subscribe("h:ticks")
        proxy.stall(Direction.DOWN)
        payload = "x" * 16384
        for _ in range(600):
            reply = await publisher.publish("h:ticks", payload)
        # The broker cannot reach the subscriber: it drops it rather than hold its backlog.
        await wait_until(lambda: running.broker.totals.slow_consumers >= 1)
        proxy.resume()
        offsets: list[int] = []
        async with asyncio.timeout(TIMEOUT * 2):
            await receive_all(sub, reply.offset, offsets)
        assert offsets == list(range(1, reply.offset + 1))
        assert subscriber.connections >= 2


async def test_a_link_that_dies_is_cleaned_up_and_the_client_recovers() -> None:
    async with (
        serve_broker(Settings(namespaces=HISTORY)) as running,
        FaultProxy(running.port) as proxy,
        connect(through(proxy), backoff=FAST) as subscriber,
        connect(running.url()) as publisher,
    ):
        sub = await subscriber.subscribe("h:ticks")
        for i in range(20):
            await publisher.publish("h:ticks", i)
        cut_off = subscriber.client_id
        proxy.cut()
        # The broker notices the reset and forgets the connection.
        await wait_until(lambda: cut_off not in running.broker.connections)
        for i in range(20, 40):
            reply = await publisher.publish("h:ticks", i)
        offsets: list[int] = []
        async with asyncio.timeout(TIMEOUT * 2):
            await receive_all(sub, reply.offset, offsets)
        assert offsets == list(range(1, reply.offset + 1))
        assert subscriber.connections == 2


async def test_a_slow_link_delays_but_loses_nothing() -> None:
    async with (
        serve_broker(Settings(namespaces=HISTORY)) as running,
        FaultProxy(running.port) as proxy,
        connect(through(proxy), backoff=FAST) as subscriber,
        connect(running.url()) as publisher,
    ):
        sub = await subscriber.subscribe("h:ticks")
        proxy.delay(0.05)
        for i in range(30):
            reply = await publisher.publish("h:ticks", i)
        offsets: list[int] = []
        async with asyncio.timeout(TIMEOUT * 2):
            await receive_all(sub, reply.offset, offsets)
        assert offsets == list(range(1, reply.offset + 1))
        assert subscriber.connections == 1
