"""Centrifugo's own Python SDK (``centrifuge-python``, unchanged) against ``/connection/websocket``
of a real broker: connect, subscribe, publish, receive, presence, history, and recovery after
the broker drops the connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    DisconnectedContext,
    PublicationContext,
    SubscribedContext,
    Subscription,
    SubscriptionEventHandler,
)

from broker.settings import NamespaceSettings, Settings
from protocol import CloseCode
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


def settings() -> Settings:
    return Settings(
        default_namespace=NamespaceSettings(history_size=100, presence=True, join_leave=True)
    )


class ClientEvents(ClientEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.connected: asyncio.Queue[ConnectedContext] = asyncio.Queue()
        self.disconnected: asyncio.Queue[DisconnectedContext] = asyncio.Queue()

    async def on_connected(self, ctx: ConnectedContext) -> None:
        await self.connected.put(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        await self.disconnected.put(ctx)


class SubscriptionEvents(SubscriptionEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[PublicationContext] = asyncio.Queue()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        await self.subscribed.put(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        await self.publications.put(ctx)


async def next_of(queue: asyncio.Queue[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await queue.get()


@asynccontextmanager
async def sdk_client(
    running: RunningBroker, **options: Any
) -> AsyncIterator[tuple[Client, ClientEvents]]:
    events = ClientEvents()
    client = Client(running.url(PATH), events=events, proxy=None, **options)
    await client.connect()
    try:
        await client.ready(timeout=TIMEOUT)
        yield client, events
    finally:
        await client.disconnect()


async def subscribe(client: Client, channel: str) -> tuple[Subscription, SubscriptionEvents]:
    events = SubscriptionEvents()
    subscription = client.new_subscription(channel, events=events)
    await subscription.subscribe()
    await subscription.ready(timeout=TIMEOUT)
    return subscription, events


async def test_publish_receive_presence_history() -> None:
    async with (
        serve_broker(settings()) as running,
        sdk_client(running) as (alice, _),
        sdk_client(running) as (bob, _),
    ):
        sub, events = await subscribe(alice, "chat:room")
        subscribed = await next_of(events.subscribed)
        assert subscribed.recoverable and subscribed.stream_position.offset == 0
        await subscribe(bob, "chat:room")
        await bob.publish("chat:room", {"text": "hello"})
        received = await next_of(events.publications)
        assert received.pub.data == {"text": "hello"} and received.pub.offset == 1
        await sub.publish({"text": "from alice"})
        assert (await next_of(events.publications)).pub.data == {"text": "from alice"}

        presence = await alice.presence("chat:room")
        assert len(presence.clients) == 2
        stats = await alice.presence_stats("chat:room")
        assert (stats.num_clients, stats.num_users) == (2, 1)

        history = await alice.history("chat:room", limit=-1)
        assert [p.data["text"] for p in history.publications] == ["hello", "from alice"]
        assert history.offset == 2 and history.epoch == subscribed.stream_position.epoch
        newest = await alice.history("chat:room", limit=1, reverse=True)
        assert [p.offset for p in newest.publications] == [2]


async def test_recovery_after_the_broker_drops_the_connection() -> None:
    async with serve_broker(settings()) as running:
        async with (
            sdk_client(running, min_reconnect_delay=0.5, max_reconnect_delay=1.0) as (
                reader,
                reader_events,
            ),
            sdk_client(running) as (writer, _),
        ):
            await next_of(reader_events.connected)
            _, events = await subscribe(reader, "feed")
            first = await next_of(events.subscribed)
            await writer.publish("feed", 1)
            assert (await next_of(events.publications)).pub.offset == 1

            # The broker drops the reader (as a drain does); while it is away, two more.
            connection = next(  # the reader's: it connected first
                c for c in running.broker.connections.values() if c.endpoint == PATH
            )
            connection.request_close(CloseCode.GOING_AWAY, reconnect=True)
            await wait_until(lambda: connection.id not in running.broker.connections)
            await writer.publish("feed", 2)
            await writer.publish("feed", 3)

            again = await next_of(events.subscribed)
            assert again.was_recovering and again.recovered
            assert again.stream_position.epoch == first.stream_position.epoch
            recovered = [await next_of(events.publications) for _ in range(2)]
            assert [(p.pub.offset, p.pub.data) for p in recovered] == [(2, 2), (3, 3)]
            await writer.publish("feed", 4)
            assert (await next_of(events.publications)).pub.offset == 4
            assert events.publications.empty()
