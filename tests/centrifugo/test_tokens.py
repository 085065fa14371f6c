"""Centrifugo's SDK with the broker's JWTs: a connection token (``sub``, ``exp``, ``channels``),
its refresh before expiry, and a private namespace entered with a subscription token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from centrifuge import Client, SubscriptionEventHandler

from broker.settings import (
    AuthMode,
    AuthSettings,
    NamespaceSettings,
    PublishPolicy,
    Settings,
    SubscribePolicy,
)
from tests.broker.auth.tokens import SECRET, claims, hs256
from tests.centrifugo.cfclient import open_centrifugo
from tests.conftest import TIMEOUT, serve_broker

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


def settings() -> Settings:
    return Settings(
        auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET]),
        default_namespace=NamespaceSettings(history_size=10, publish=PublishPolicy.SUBSCRIBERS),
        namespaces={"private": NamespaceSettings(subscribe=SubscribePolicy.TOKEN)},
    )


class Publications(SubscriptionEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_publication(self, ctx: Any) -> None:
        await self.queue.put(ctx.pub.data)


async def test_token_refresh_and_a_private_channel() -> None:
    tokens_issued = 0

    async def get_token() -> str:
        nonlocal tokens_issued
        tokens_issued += 1
        # A short life: the SDK must refresh it while connected.
        return hs256(claims(sub="alice", ttl=3, channels=["news"]))

    async def get_subscription_token(channel: str) -> str:
        return hs256(claims(sub="alice", channel=channel))

    async with serve_broker(settings()) as running:
        client = Client(running.url(PATH), get_token=get_token, proxy=None)
        await client.connect()
        try:
            await client.ready(timeout=TIMEOUT)
            events = Publications()
            news = client.new_subscription("news", events=events)
            await news.subscribe()
            await news.ready(timeout=TIMEOUT)
            private = client.new_subscription(
                "private:room", get_token=get_subscription_token, events=events
            )
            await private.subscribe()
            await private.ready(timeout=TIMEOUT)
            await client.publish("news", {"n": 1})
            async with asyncio.timeout(TIMEOUT):
                assert await events.queue.get() == {"n": 1}
            # Past the first token's expiry the connection is still the same one: refreshed.
            connection = next(iter(running.broker.connections.values()))
            await asyncio.sleep(4)  # the token's 3 s life, and the leeway's margin
            assert tokens_issued >= 2
            assert connection.id in running.broker.connections
            assert connection.subscriber.user == "alice"
        finally:
            await client.disconnect()


async def test_a_bad_token_is_an_invalid_token_disconnect() -> None:
    async with (
        serve_broker(settings()) as running,
        open_centrifugo(running.url(PATH), connected=False) as raw,
    ):
        bad = hs256(claims(sub="mallory"), secret="not-the-secret-0123456789-abcdefghij")
        await raw.send({"id": 1, "connect": {"token": bad}})
        message = await raw.receive()
        assert message["push"]["disconnect"]["code"] == 3500
        assert message["push"]["disconnect"].get("reconnect", False) is False


async def test_a_channel_outside_the_claims_is_permission_denied() -> None:
    async with serve_broker(settings()) as running:
        async with open_centrifugo(running.url(PATH), connected=False) as raw:
            token = hs256(claims(sub="bob", channels=["news"]))
            await raw.connect(token=token)
            denied = await raw.call({"subscribe": {"channel": "secret"}})
            assert denied["error"]["code"] == 103
            private = await raw.call({"subscribe": {"channel": "private:x"}})
            assert private["error"]["code"] == 103
            sub_token = hs256(claims(sub="bob", channel="private:x"))
            allowed = await raw.call({"subscribe": {"channel": "private:x", "token": sub_token}})
            assert "subscribe" in allowed
