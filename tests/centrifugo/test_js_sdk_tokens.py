"""Centrifugo's JavaScript SDK (npm ``centrifuge``, unchanged) with the broker's JWTs: server-side
subscriptions from the connection token's ``subs`` (the client's own ``subscribed`` and
``publication`` events, recovery after a drop), and subscription tokens that the SDK refreshes
with ``getToken`` or that expire."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.auth.tokens import issue_token
from broker.settings import (
    AuthMode,
    AuthSettings,
    NamespaceSettings,
    Settings,
    SubscribePolicy,
)
from protocol import CloseCode
from tests.broker.auth.tokens import SECRET
from tests.centrifugo.cfclient import open_centrifugo
from tests.centrifugo.jsdriver import js_client
from tests.conftest import serve_broker, wait_until

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"
FAST_RECONNECT = {"minReconnectDelay": 300, "maxReconnectDelay": 1000}


def settings() -> Settings:
    return Settings(
        # A subscription ends 1 s after its token's exp: the SDK refreshes at ``ttl`` (whole
        # seconds, rounded down) and needs the margin for its sub_refresh to arrive.
        auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET], leeway=1),
        default_namespace=NamespaceSettings(history_size=100),
        namespaces={"private": NamespaceSettings(subscribe=SubscribePolicy.TOKEN, history_size=10)},
    )


async def test_server_side_subscriptions_publish_and_recover() -> None:
    config = settings()
    token = issue_token(config.auth, sub="alice", ttl=3600, subs=["feed"])
    async with (
        serve_broker(config) as running,
        js_client(running.url(PATH), token=token, **FAST_RECONNECT) as alice,
        open_centrifugo(running.url(PATH), connected=False) as writer,
    ):
        first = await alice.event("server_subscribed")
        assert first["channel"] == "feed" and first["recoverable"] and first["positioned"]
        await writer.connect(token=issue_token(config.auth, sub="w", ttl=3600, publish=["feed"]))
        await writer.call({"publish": {"channel": "feed", "data": {"n": 1}}})
        publication = await alice.event("server_publication")
        assert (publication["channel"], publication["offset"]) == ("feed", 1)
        assert publication["data"] == {"n": 1}

        connection = next(
            c
            for c in running.broker.connections.values()
            if c.subscriber.user == "alice" and c.endpoint == PATH
        )
        connection.request_close(CloseCode.GOING_AWAY, reconnect=True)
        await wait_until(lambda: connection.id not in running.broker.connections)
        for n in (2, 3):
            await writer.call({"publish": {"channel": "feed", "data": {"n": n}}})
        again = await alice.event("server_subscribed")
        assert again["wasRecovering"] and again["recovered"]
        assert again["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]
        recovered = [await alice.event("server_publication") for _ in range(2)]
        assert [(p["offset"], p["data"]["n"]) for p in recovered] == [(2, 2), (3, 3)]
        await writer.call({"publish": {"channel": "feed", "data": {"n": 4}}})
        assert (await alice.event("server_publication"))["offset"] == 4
        assert not alice.pending("server_unsubscribed")


async def test_the_sdk_refreshes_a_subscription_token_with_get_token() -> None:
    config = settings()
    tokens = [
        issue_token(config.auth, sub="alice", ttl=2, channel="private:room"),
        issue_token(config.auth, sub="alice", ttl=3600, channel="private:room"),
    ]
    connect_token = issue_token(config.auth, sub="alice", ttl=3600, publish=["private:room"])
    async with (
        serve_broker(config) as running,
        js_client(running.url(PATH), token=connect_token) as alice,
    ):
        started = time.time()
        await alice.call("subscribe", channel="private:room", tokens=tokens)
        await alice.event("subscribed")
        await alice.event("sub_get_token", lambda e: e["left"] == 2)
        # The SDK asks again before the first token's 2 s are over, and sends sub_refresh.
        await alice.event("sub_get_token", lambda e: e["left"] == 1)
        await asyncio.sleep(max(0.0, started + 3.2 - time.time()))  # past exp + leeway
        await alice.call("publish", channel="private:room", data={"after": "expiry"})
        publication = await alice.event("publication")
        assert publication["data"] == {"after": "expiry"}
        # Subscribing once only (``subscribe()``, code 0), never again; never unsubscribed.
        assert [e["code"] for e in alice.pending("sub_subscribing")] == [0]
        assert not alice.pending("sub_unsubscribed")


async def test_a_subscription_whose_token_is_not_refreshed_is_ended() -> None:
    config = settings()
    tokens = [issue_token(config.auth, sub="alice", ttl=2, channel="private:room")]
    connect_token = issue_token(config.auth, sub="alice", ttl=3600)
    async with (
        serve_broker(config) as running,
        js_client(running.url(PATH), token=connect_token) as alice,
    ):
        await alice.call("subscribe", channel="private:room", tokens=tokens)
        await alice.event("subscribed")
        # getToken never answers the second time: the server ends the subscription at exp, and
        # the SDK goes back to subscribing (a code from 2500: it will resubscribe).
        ended = await alice.event("sub_subscribing", lambda e: e["code"] == 2501)
        assert ended["reason"] == "subscription expired"
        connection = next(iter(running.broker.connections.values()))
        assert "private:room" not in connection.subscriber.channels
