"""The Python client's server-side subscriptions: the token's ``subs`` and an operator's subscribe
(``POST /v1/users/{user}/subscribe``) arrive through ``Client.server_subscriptions()`` as
``Subscription``s that deliver the channel's publications; the operator's unsubscribe ends one;
across a reconnection nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from broker.client import Client, Message, RequestError, Subscription, connect
from broker.settings import NamespaceSettings
from protocol import CloseCode
from tests.broker.auth.helpers import jwt_settings
from tests.broker.auth.tokens import claims, hs256
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until

pytestmark = pytest.mark.anyio

SETTINGS = jwt_settings(namespaces={"h": NamespaceSettings(history_size=100)})


def token(**extra: Any) -> str:
    return hs256(claims(sub="alice", **extra))


async def next_server_subscription(client: Client) -> Subscription[Message]:
    async with asyncio.timeout(TIMEOUT):
        return await anext(client.server_subscriptions())


async def take(sub: Subscription[Message], count: int) -> list[Any]:
    async with asyncio.timeout(TIMEOUT):
        return [(await anext(sub)).data for _ in range(count)]


async def publish(http: httpx.AsyncClient, channel: str, data: Any) -> dict[str, Any]:
    response = await http.post("/v1/publish", json={"channel": channel, "data": data})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def drop(running: RunningBroker, client: Client) -> None:
    """Close ``client``'s connection, telling it to come back after 0.5 s; return once the
    broker has forgotten it (what is published next is published while the client is away)."""
    client_id = client.client_id
    assert client_id is not None
    running.broker.connections[client_id].request_close(
        CloseCode.GOING_AWAY, reconnect=True, retry_after=0.5
    )
    await wait_until(lambda: client_id not in running.broker.connections)


async def test_the_operator_subscribes_the_user_and_unsubscribes_it() -> None:
    async with (
        serve_broker(SETTINGS) as running,
        connect(running.url(), token=token()) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await publish(http, "h:feed", "before")
        response = await http.post("/v1/users/alice/subscribe", json={"channel": "h:feed"})
        assert response.json() == {"user": "alice", "channel": "h:feed", "subscribed": 1}
        feed = await next_server_subscription(alice)
        assert feed.server_side and feed.channel == "h:feed"
        assert alice.subscriptions == {"h:feed": feed}
        # From the channel's position at the subscribe: what came before is not delivered.
        await publish(http, "h:feed", "one")
        await publish(http, "h:feed", "two")
        assert await take(feed, 2) == ["one", "two"]

        response = await http.post("/v1/users/alice/unsubscribe", json={"channel": "h:feed"})
        assert response.json()["unsubscribed"] == 1
        async with asyncio.timeout(TIMEOUT):
            assert [m async for m in feed] == []  # iteration ends
        assert feed.closed and alice.subscriptions == {}


async def test_an_operator_subscribe_from_a_position_delivers_what_came_after_it() -> None:
    async with (
        serve_broker(SETTINGS) as running,
        connect(running.url(), token=token()) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        first = await publish(http, "h:feed", 1)
        for n in (2, 3):
            await publish(http, "h:feed", n)
        since = {"offset": first["offset"], "epoch": first["epoch"]}
        body = {"channel": "h:feed", "client": alice.client_id, "since": since}
        response = await http.post("/v1/users/alice/subscribe", json=body)
        assert response.json()["subscribed"] == 1
        feed = await next_server_subscription(alice)
        await publish(http, "h:feed", 4)
        assert await take(feed, 3) == [2, 3, 4]


async def test_token_subs_survive_a_reconnection_without_a_loss() -> None:
    async with (
        serve_broker(SETTINGS) as running,
        connect(running.url(), token=token(subs=["h:feed"])) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        feed = await next_server_subscription(alice)
        await publish(http, "h:feed", 1)
        assert await take(feed, 1) == [1]
        await drop(running, alice)
        # Published while the client is away: the server subscribes the new connection from
        # the channel's position, and the client fetches what it missed.
        await publish(http, "h:feed", 2)
        await publish(http, "h:feed", 3)
        await wait_until(lambda: alice.connections == 2 and alice.connected)
        await publish(http, "h:feed", 4)
        assert await take(feed, 3) == [2, 3, 4]
        assert alice.subscriptions == {"h:feed": feed} and not feed.closed
        # Once: the same subscription goes on, it is not handed out again.
        more = asyncio.ensure_future(anext(alice.server_subscriptions()))
        await alice.ping()
        assert not more.done()
        more.cancel()


async def test_an_operator_subscription_is_kept_across_a_reconnection_where_allowed() -> None:
    async with (
        serve_broker(SETTINGS) as running,
        connect(running.url(), token=token(channels=["h:feed"])) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await http.post("/v1/users/alice/subscribe", json={"channel": "h:feed"})
        feed = await next_server_subscription(alice)
        await publish(http, "h:feed", 1)
        assert await take(feed, 1) == [1]
        await drop(running, alice)
        await publish(http, "h:feed", 2)
        await wait_until(lambda: alice.connections == 2 and alice.connected)
        await publish(http, "h:feed", 3)
        # The client subscribed again itself, from its position (its permissions allow it).
        assert await take(feed, 2) == [2, 3]


async def test_an_operator_subscription_the_user_may_not_make_ends_at_a_reconnection() -> None:
    async with (
        serve_broker(SETTINGS) as running,
        connect(running.url(), token=token()) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await http.post("/v1/users/alice/subscribe", json={"channel": "h:feed"})
        feed = await next_server_subscription(alice)
        await drop(running, alice)
        await wait_until(lambda: alice.connections == 2 and alice.connected)
        # The operator's grant was for the connection; the user's own permissions refuse it.
        with pytest.raises(RequestError, match="permission_denied"):
            await take(feed, 1)
        assert alice.subscriptions == {}
