"""The client reconnects by itself and recovers: every publication exactly once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from broker.client import (
    Backoff,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    Message,
    Subscription,
    SubscriptionStatistics,
    connect,
)
from broker.settings import (
    LimitSettings,
    NamespaceSettings,
    QueueSettings,
    Settings,
    WebSocketSettings,
)
from protocol import CloseCode
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

SETTINGS = Settings(namespaces={"h": NamespaceSettings(history_size=100_000)})
FAST = Backoff(base=0.01, cap=0.1)


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    async with serve_broker(SETTINGS) as running_broker:
        yield running_broker


class Tally:
    """What a subscriber received, with a way to wait until it has received ``count``."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def add(self, message: Message) -> None:
        self.messages.append(message)
        for count, event in self._waiters:
            if len(self.messages) >= count:
                event.set()

    async def reach(self, count: int) -> None:
        event = asyncio.Event()
        self._waiters.append((count, event))
        if len(self.messages) >= count:
            event.set()
        async with asyncio.timeout(TIMEOUT):
            await event.wait()


async def consume(sub: Subscription[Message], tally: Tally, last: asyncio.Future[int]) -> None:
    """Take messages until the publisher's last offset has come."""
    async for message in sub:
        tally.add(message)
        if last.done() and message.offset >= last.result():
            return


async def cut_while_publishing(
    running: RunningBroker, cut: Callable[[RunningBroker, str], Any], cuts: int = 3
) -> tuple[SubscriptionStatistics, list[Message], int]:
    """A publisher publishes without pause while the subscriber's connection is cut ``cuts``
    times, each after it has received some more; then the publisher stops. The subscription's
    statistics, what it received, and the last offset published."""
    async with (
        connect(running.url(), backoff=FAST) as subscriber,
        connect(running.url()) as publisher,
    ):
        sub = await subscriber.subscribe("h:ticks")
        tally = Tally()
        last: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done_cutting = asyncio.Event()

        async def publish() -> None:
            i = 0
            while not done_cutting.is_set():
                i += 1
                await publisher.publish("h:ticks", i)
            for _ in range(50):  # some more after the last reconnection
                i += 1
                reply = await publisher.publish("h:ticks", i)
            last.set_result(reply.offset)

        async def cutter() -> None:
            for n in range(1, cuts + 1):
                await tally.reach(len(tally.messages) + 20)
                assert subscriber.client_id is not None
                await cut(running, subscriber.client_id)
                async with asyncio.timeout(TIMEOUT):
                    await subscriber.wait_connected(after=n)
            done_cutting.set()

        async with asyncio.timeout(TIMEOUT * 2), asyncio.TaskGroup() as tasks:
            tasks.create_task(publish())
            tasks.create_task(cutter())
            tasks.create_task(consume(sub, tally, last))
        assert subscriber.connections == cuts + 1
        return sub.statistics(), tally.messages, last.result()


def assert_exactly_once_in_order(messages: list[Message], last: int) -> None:
    offsets = [m.offset for m in messages]
    assert offsets == list(range(1, last + 1)), (
        f"missing {sorted(set(range(1, last + 1)) - set(offsets))[:10]}, "
        f"{len(offsets) - len(set(offsets))} duplicates"
    )
    assert [m.data for m in messages] == offsets
    assert len({m.epoch for m in messages}) == 1


async def test_a_subscriber_closed_by_the_server_reconnects_and_gets_every_publication_once(
    running: RunningBroker,
) -> None:
    async def close(running: RunningBroker, client_id: str) -> None:
        # What a drain does (docs/protocol.md 1001: reconnect and recover), on this one connection.
        running.broker.connections[client_id].request_close(
            CloseCode.GOING_AWAY, reconnect=True, retry_after=0.05
        )

    statistics, messages, last = await cut_while_publishing(running, close)
    assert_exactly_once_in_order(messages, last)
    assert statistics.recovered > 0, "nothing was published while disconnected"


async def test_a_subscriber_whose_socket_is_reset_reconnects_and_gets_every_publication_once(
    running: RunningBroker,
) -> None:
    async def reset(running: RunningBroker, client_id: str) -> None:
        link = running.broker.connections[client_id].link
        assert link is not None
        link.abort()  # SO_LINGER 0 + abort: an RST, no close frame

    statistics, messages, last = await cut_while_publishing(running, reset)
    assert_exactly_once_in_order(messages, last)
    assert statistics.recovered > 0, "nothing was published while disconnected"


async def test_requests_wait_for_the_next_connection_and_those_in_flight_raise_connection_lost(
    running: RunningBroker,
) -> None:
    async with connect(running.url(), backoff=FAST) as client:
        assert client.client_id is not None
        running.broker.connections[client.client_id].request_close(
            CloseCode.GOING_AWAY, reconnect=True, retry_after=0.3
        )
        # Either the request went out before the close (and its reply was lost with the
        # connection) or it waited for the next connection: never silence.
        try:
            reply = await client.publish("h:x", 1)
        except ConnectionLost:
            reply = await client.publish("h:x", 1)
        assert reply.channel == "h:x"
        assert client.connections == 2


async def test_an_operator_disconnect_says_do_not_reconnect_and_the_client_gives_up_clearly(
    running: RunningBroker,
) -> None:
    async with connect(running.url(), backoff=FAST) as client:
        sub = await client.subscribe("h:x")
        async with httpx.AsyncClient() as http:
            answer = await http.post(running.http(f"/v1/clients/{client.client_id}/disconnect"))
        assert answer.json()["disconnected"] is True
        with pytest.raises(Disconnected) as ended:
            async with asyncio.timeout(TIMEOUT):
                await anext(sub)
        assert (ended.value.code, ended.value.reason) == (4010, "disconnected by operator")
        with pytest.raises(Disconnected):
            await client.publish("h:x", 1)
        assert client.connections == 1


async def test_a_client_that_cannot_reconnect_gives_up_after_max_attempts() -> None:
    settings = msgspec.structs.replace(SETTINGS, limits=LimitSettings(retry_after=0.05))
    async with serve_broker(settings) as running:
        client = connect(running.url(), backoff=FAST, max_attempts=3)
        await client.__aenter__()
        sub = await client.subscribe("h:x")
    # The broker is gone for good.
    try:
        with pytest.raises(ConnectFailed, match="after 3 attempts"):
            async with asyncio.timeout(TIMEOUT):
                await anext(sub)
    finally:
        await client.__aexit__(None, None, None)


async def test_a_client_dropped_as_a_slow_consumer_reconnects_and_recovers() -> None:
    """Overflow policy ``disconnect`` promises "the client reconnects and recovers"
    (broker/settings.py). A publication larger than the outbox's byte bound overflows it: the
    broker drops the client with 4008 before the reply to its own publish leaves. The publish,
    whose reply was lost, is sent again with its idempotency key: published once; the
    publication comes back in the recovery (a reply, which may pass the bound)."""
    settings = Settings(
        queue=QueueSettings(max_bytes=1024),
        namespaces={"h": NamespaceSettings(history_size=100)},
    )
    mine = "mine" + "." * 2000
    async with (
        serve_broker(settings) as running,
        connect(running.url(), backoff=FAST) as client,
    ):
        sub = await client.subscribe("h:self")
        reply = await client.publish("h:self", mine)  # its own delivery is what overflows
        assert reply.offset == 1
        async with asyncio.timeout(TIMEOUT):
            message = await anext(sub)
        assert (message.offset, message.data) == (1, mine)
        assert client.connections == 2
        second = await client.publish("h:self", "next")
        assert second.offset == 2  # the retry published nothing


async def test_a_client_refused_at_the_connection_limit_waits_retry_after_before_trying_again() -> (
    None
):
    settings = Settings(limits=LimitSettings(max_connections=2, retry_after=0.5))
    loop = asyncio.get_running_loop()
    async with (
        serve_broker(settings) as running,
        connect(running.url(), backoff=FAST) as client,
        open_client(running.url()),
    ):
        assert client.client_id is not None
        running.broker.connections[client.client_id].request_close(
            CloseCode.GOING_AWAY, reconnect=True, retry_after=0.2
        )
        await wait_until(lambda: len(running.broker.connections) == 1)
        async with open_client(running.url()):  # takes the client's place
            await wait_until(lambda: running.broker.totals.connections_refused == 1)
            refused = loop.time()
        # There is room again, but the client was told to wait 0.5 s.
        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected(after=1)
        assert loop.time() - refused >= 0.45
        assert running.broker.totals.connections_refused == 1


async def test_a_client_whose_pongs_stop_coming_cuts_the_connection_and_reconnects() -> None:
    """The broker stops reading this client (a stuck server, a dead path): no ``pong`` comes
    back within ``heartbeat``, and the client replaces the connection by itself."""
    settings = Settings(websocket=WebSocketSettings(heartbeat=0.5, heartbeat_grace=5.0))
    async with serve_broker(settings) as running, connect(running.url(), backoff=FAST) as client:
        sub = await client.subscribe("news")
        assert client.client_id is not None
        link = running.broker.connections[client.client_id].link
        assert link is not None
        link._protocol.transport.pause_reading()
        async with asyncio.timeout(TIMEOUT):
            await client.wait_connected(after=1)
        assert client.connections == 2
        await client.publish("news", "still here")
        async with asyncio.timeout(TIMEOUT):
            assert (await anext(sub)).data == "still here"
