"""The Python client against a real broker: requests and replies, delivery, errors, liveness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from broker.client import (
    Backoff,
    ClientClosed,
    ConnectFailed,
    Encoding,
    Message,
    PresenceChange,
    RequestError,
    ResyncNeeded,
    StreamPosition,
    Subscription,
    connect,
)
from broker.settings import (
    LimitSettings,
    NamespaceSettings,
    OverflowPolicy,
    QueueSettings,
    Settings,
    WebSocketSettings,
)
from tests.conftest import TIMEOUT, RunningBroker, free_socket, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    namespaces={
        "h": NamespaceSettings(history_size=1000),
        "p": NamespaceSettings(presence=True, join_leave=True),
        "ro": NamespaceSettings(allow_publish=False),
    },
    limits=LimitSettings(max_subscriptions=3),
)

FAST = Backoff(base=0.01, cap=0.1)


async def take(sub: Subscription[Any], count: int) -> list[Any]:
    """The next ``count`` items of ``sub``."""
    items: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        while len(items) < count:
            items.append(await anext(sub))
    return items


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    async with serve_broker(SETTINGS) as running_broker:
        yield running_broker


@pytest.mark.parametrize(
    ("publisher_encoding", "subscriber_encoding"),
    [
        (Encoding.JSON, Encoding.JSON),
        (Encoding.MSGPACK, Encoding.MSGPACK),
        (Encoding.JSON, Encoding.MSGPACK),
        (Encoding.MSGPACK, Encoding.JSON),
    ],
    ids=["json", "msgpack", "json-to-msgpack", "msgpack-to-json"],
)
async def test_publish_returns_offset_and_epoch_and_subscribers_get_the_data_as_python_values(
    running: RunningBroker, publisher_encoding: Encoding, subscriber_encoding: Encoding
) -> None:
    async with (
        connect(running.url(), encoding=publisher_encoding) as publisher,
        connect(running.url(), encoding=subscriber_encoding) as subscriber,
    ):
        sub = await subscriber.subscribe("news")
        values = [{"text": "hi", "n": [1, 2.5, None, True]}, "plain", 42]
        replies = [await publisher.publish("news", value) for value in values]
        assert [r.offset for r in replies] == [1, 2, 3]
        assert sub.position is not None
        assert {r.epoch for r in replies} == {sub.position.epoch}
        messages = await take(sub, 3)
        assert messages == [
            Message("news", i + 1, replies[0].epoch, value, publisher.client_id)
            for i, value in enumerate(values)
        ]


async def test_publish_without_wait_returns_none_and_is_delivered(running: RunningBroker) -> None:
    async with connect(running.url()) as client:
        sub = await client.subscribe("news")
        await client.publish("news", "fire", wait=False)  # typed to return None
        [message] = await take(sub, 1)
        assert (message.offset, message.data) == (1, "fire")


@pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])
async def test_history_and_presence_come_back_decoded(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with connect(running.url(), encoding=encoding) as a, connect(running.url()) as b:
        for i in range(1, 6):
            await a.publish("h:log", {"i": i})
        page = await b.history("h:log", limit=2)
        assert (page.channel, page.offset) == ("h:log", 5)
        assert [(m.offset, m.data) for m in page.publications] == [(4, {"i": 4}), (5, {"i": 5})]
        since = StreamPosition(offset=1, epoch=page.epoch)
        page = await a.history("h:log", since=since, limit=2)
        assert [m.data for m in page.publications] == [{"i": 2}, {"i": 3}]

        await a.subscribe("p:room")
        await b.subscribe("p:room")
        members = await a.presence("p:room")
        assert sorted((c.client, c.user) for c in members) == sorted(
            [(a.client_id, None), (b.client_id, None)]
        )


async def test_error_replies_raise_request_error_and_the_client_carries_on(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as client:
        with pytest.raises(RequestError) as denied:
            await client.publish("ro:feed", 1)
        assert denied.value.code == "permission_denied"
        with pytest.raises(RequestError) as no_history:
            await client.history("news")
        assert no_history.value.code == "bad_request"
        assert "history is not enabled" in no_history.value.message
        with pytest.raises(RequestError) as no_presence:
            await client.presence("news")
        assert no_presence.value.code == "bad_request"
        with pytest.raises(RequestError) as bad_name:
            await client.subscribe("no spaces allowed")
        assert bad_name.value.code == "bad_request"
        for name in ("a", "b", "c"):
            await client.subscribe(name)
        with pytest.raises(RequestError) as too_many:
            await client.subscribe("d")
        assert too_many.value.code == "limit_exceeded"
        assert "d" not in client.subscriptions
        with pytest.raises(RequestError) as twice:
            await client.subscribe("a")
        assert twice.value.code == "already_subscribed"
        assert client.connections == 1
        assert await client.ping() >= 0


async def test_unsubscribe_ends_iteration_after_what_was_already_queued(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as client:
        sub = await client.subscribe("news")
        await client.publish("news", "before")
        async with asyncio.timeout(TIMEOUT):
            while not len(sub):
                await client.ping()  # a round trip: the publication is read before the pong
        await sub.unsubscribe()
        await client.publish("news", "after")
        assert [m.data async for m in sub] == ["before"]
        assert running.broker.hub.subscriber_count("news") == 0
        # The channel can be subscribed again; leaving ``async with`` unsubscribes.
        async with await client.subscribe("news") as again:
            await client.publish("news", "again")
            assert [m.data for m in await take(again, 1)] == ["again"]
        assert running.broker.hub.subscriber_count("news") == 0
        assert again.closed and "news" not in client.subscriptions


async def test_closing_the_client_ends_its_subscriptions_and_refuses_later_calls(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as client:
        sub = await client.subscribe("news")

        async def consume() -> list[Message]:
            return [message async for message in sub]

        async with asyncio.TaskGroup() as tasks:
            consumer = tasks.create_task(consume())
            await client.publish("news", 1)
            await client.aclose()
    # The publication came before the ``published`` reply: it was queued, and is not lost.
    assert [(m.offset, m.data) for m in consumer.result()] == [(1, 1)]
    with pytest.raises(ClientClosed):
        await client.publish("news", 2)
    with pytest.raises(ClientClosed):
        await client.subscribe("other")


async def test_an_exception_in_the_body_comes_out_unwrapped(running: RunningBroker) -> None:
    with pytest.raises(KeyError):
        async with connect(running.url()) as client:
            await client.subscribe("news")
            raise KeyError("from the body")


async def test_a_broker_that_is_not_there_fails_the_first_connect_at_once() -> None:
    with free_socket() as sock:
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ConnectFailed, match="cannot connect"):
            async with asyncio.timeout(TIMEOUT), connect(f"ws://127.0.0.1:{port}/v1/ws"):
                pass


async def test_subscribe_since_a_position_delivers_what_was_missed_then_live(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as client:
        replies = [await client.publish("h:feed", i) for i in range(1, 6)]
        since = StreamPosition(offset=2, epoch=replies[0].epoch)
        sub = await client.subscribe("h:feed", since=since)
        await client.publish("h:feed", 6)
        assert [(m.offset, m.data) for m in await take(sub, 4)] == [(i, i) for i in range(3, 7)]


async def test_subscribe_since_an_unknown_epoch_raises_resync_needed_first_then_goes_on(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as client:
        reply = await client.publish("h:feed", "old")
        sub = await client.subscribe("h:feed", since=StreamPosition(offset=1, epoch="gone"))
        await client.publish("h:feed", "new")
        with pytest.raises(ResyncNeeded) as resync:
            await take(sub, 1)
        assert (resync.value.channel, resync.value.epoch, resync.value.offset) == (
            "h:feed",
            reply.epoch,
            1,
        )
        [message] = await take(sub, 1)
        assert (message.offset, message.data) == (2, "new")


async def test_joins_and_leaves_are_yielded_in_order_with_the_messages_when_asked_for(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as watcher:
        sub = await watcher.subscribe("p:room", joins_and_leaves=True)
        plain = await watcher.subscribe("p:other")
        async with connect(running.url()) as visitor:
            await visitor.subscribe("p:room")
            await visitor.subscribe("p:other")
            await visitor.publish("p:room", "hello")
            visitor_id = visitor.client_id
        assert visitor_id is not None
        items = await take(sub, 3)
        assert items[0] == PresenceChange("join", "p:room", visitor_id, None)
        assert isinstance(items[1], Message) and items[1].data == "hello"
        assert items[2] == PresenceChange("leave", "p:room", visitor_id, None)
        # Without joins_and_leaves, presence changes are not queued.
        await watcher.publish("p:other", "only this")
        assert [m.data for m in await take(plain, 1)] == ["only this"]


async def test_a_consumer_slower_than_the_publisher_still_gets_every_publication_once_in_order(
    running: RunningBroker,
) -> None:
    """The subscription's queue (8) overflows: it drops what comes live, then fetches it from
    history as the consumer makes room, and goes live again where history ends."""
    total = 200
    async with connect(running.url()) as subscriber, connect(running.url()) as publisher:
        sub = await subscriber.subscribe("h:fast", queue_size=8)

        async def publish_all() -> None:
            for i in range(1, total + 1):
                await publisher.publish("h:fast", i)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish_all())
            # Let the queue overflow before consuming anything.
            async with asyncio.timeout(TIMEOUT):
                while len(sub) < 8:
                    await subscriber.ping()
            received = await take(sub, total)
        assert [m.offset for m in received] == list(range(1, total + 1))
        assert [m.data for m in received] == list(range(1, total + 1))
        assert subscriber.connections == 1
        statistics = sub.statistics()
        assert statistics.fetched > 0 and statistics.skipped > 0 and statistics.resyncs == 0


async def test_an_overflowing_consumer_where_history_is_off_gets_resync_needed_then_new_ones(
    running: RunningBroker,
) -> None:
    async with connect(running.url()) as subscriber, connect(running.url()) as publisher:
        sub = await subscriber.subscribe("nohistory", queue_size=4)
        for i in range(1, 11):
            await publisher.publish("nohistory", i)
        async with asyncio.timeout(TIMEOUT):
            while len(sub) < 4:
                await subscriber.ping()
        assert [m.offset for m in await take(sub, 4)] == [1, 2, 3, 4]
        with pytest.raises(ResyncNeeded) as resync:
            await take(sub, 1)
        assert resync.value.offset == 10
        await publisher.publish("nohistory", 11)
        assert [m.offset for m in await take(sub, 1)] == [11]
        assert sub.statistics().resyncs == 1


async def test_gaps_from_a_drop_oldest_broker_are_filled_from_history() -> None:
    """With ``drop_oldest`` and a tiny outbox, a broker whose writes to us are stuck drops
    publications and says so with ``gap``; the client fetches them and delivers every one."""
    settings = Settings(
        queue=QueueSettings(max_messages=4, overflow=OverflowPolicy.DROP_OLDEST),
        namespaces={"h": NamespaceSettings(history_size=10_000)},
    )
    total = 4000  # 2 KB each: more than the kernel buffers between us and the broker hold
    pad = "x" * 2000
    async with (
        serve_broker(settings) as running,
        connect(running.url()) as subscriber,
        connect(running.url()) as publisher,
    ):
        sub = await subscriber.subscribe("h:burst")
        connection = running.broker.connections[subscriber.client_id or ""]
        # A slow network: the client's socket is not read while the publisher bursts.
        transport = subscriber._link.ws.transport  # type: ignore[union-attr]
        transport.pause_reading()
        for i in range(1, total):
            await publisher.publish("h:burst", {"i": i, "pad": pad}, wait=False)
        await publisher.publish("h:burst", {"i": total, "pad": pad})  # all of them are in
        transport.resume_reading()
        received = await take(sub, total)
        assert [m.data["i"] for m in received] == list(range(1, total + 1))
        assert connection.outbox.statistics().dropped > 0, "no gap happened: test proves nothing"
        assert sub.statistics().fetched > 0
        assert subscriber.connections == 1


HEARTBEAT = Settings(websocket=WebSocketSettings(heartbeat=0.5, heartbeat_grace=0.3))


async def test_the_heartbeat_keeps_an_idle_client_connected_past_the_servers_deadline() -> None:
    async with serve_broker(HEARTBEAT) as running, connect(running.url()) as client:
        assert client.welcome is not None and client.welcome.heartbeat == 0.5
        # A client that sends nothing is closed within heartbeat + grace (0.8 s)...
        async with open_client(running.url()) as silent:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await silent.recv()
        # ...by then this one has sent nothing of its own either, but it is still there.
        await asyncio.sleep(1.0)  # the behaviour under test is the passing of time
        assert client.connections == 1
        assert client.client_id in running.broker.connections
        assert await client.ping() >= 0
