"""Centrifugo's Python SDK (``centrifuge-python``, unchanged) with server-side subscriptions: the
channels of the connection token's ``subs`` arrive as the client's own ``on_subscribed`` and
``on_publication`` events, and are recovered after the broker drops the connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ServerPublicationContext,
    ServerSubscribedContext,
)

from broker.auth.tokens import issue_token
from broker.settings import AuthMode, AuthSettings, NamespaceSettings, Settings
from protocol import CloseCode
from tests.broker.auth.tokens import SECRET
from tests.centrifugo.cfclient import open_centrifugo
from tests.conftest import TIMEOUT, serve_broker, wait_until

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


class ServerSideEvents(ClientEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[ServerPublicationContext] = asyncio.Queue()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        await self.subscribed.put(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        await self.publications.put(ctx)


async def next_of(queue: asyncio.Queue[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await queue.get()


async def test_server_side_subscriptions_publish_and_recover() -> None:
    config = Settings(
        auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET]),
        default_namespace=NamespaceSettings(history_size=100),
    )
    events = ServerSideEvents()
    token = issue_token(config.auth, sub="alice", ttl=3600, subs=["feed"])
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as writer,
    ):
        await writer.connect(token=issue_token(config.auth, sub="w", ttl=3600, publish=["feed"]))
        client = Client(
            running.url(PATH), events=events, token=token, proxy=None, max_reconnect_delay=0.5
        )
        await client.connect()
        try:
            first = await next_of(events.subscribed)
            assert first.channel == "feed" and first.recoverable and first.positioned
            await writer.call({"publish": {"channel": "feed", "data": {"n": 1}}})
            publication = await next_of(events.publications)
            assert publication.channel == "feed" and publication.pub.data == {"n": 1}
            assert publication.pub.offset == 1

            connection = next(
                c for c in running.broker.connections.values() if c.subscriber.user == "alice"
            )
            connection.request_close(CloseCode.GOING_AWAY, reconnect=True)
            await wait_until(lambda: connection.id not in running.broker.connections)
            for n in (2, 3):
                await writer.call({"publish": {"channel": "feed", "data": {"n": n}}})
            again = await next_of(events.subscribed)
            assert again.was_recovering and again.recovered
            assert again.stream_position.epoch == first.stream_position.epoch
            recovered = [await next_of(events.publications) for _ in range(2)]
            assert [(p.pub.offset, p.pub.data["n"]) for p in recovered] == [(2, 2), (3, 3)]
        finally:
            await client.disconnect()
