"""The operator's ``POST /v1/users/{user}/subscribe`` on Centrifugo connections: a ``subscribe``
push (a server-side subscription made after connect), then the channel's publications as pushes;
at the protocol level, with Centrifugo's JavaScript SDK (npm ``centrifuge``) and Python SDK
(``centrifuge-python``), and across two broker processes on one Redis (the control path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
)

from broker.auth.tokens import issue_token
from broker.settings import (
    ApiSettings,
    AuthMode,
    AuthSettings,
    BackplaneKind,
    BackplaneSettings,
    LimitSettings,
    NamespaceSettings,
    Settings,
)
from tests.broker.auth.tokens import SECRET
from tests.centrifugo.cfclient import open_centrifugo
from tests.centrifugo.jsdriver import js_client
from tests.conftest import TIMEOUT, serve_broker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"
KEY = "operator-key-0123456789abcdef"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


def settings(**changes: Any) -> Settings:
    config = Settings(
        auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET]),
        api=ApiSettings(keys=[KEY]),
        default_namespace=NamespaceSettings(history_size=100),
        namespaces={"live": NamespaceSettings()},
    )
    return msgspec.structs.replace(config, **changes)


def token(config: Settings, sub: str, **claims: Any) -> str:
    return issue_token(config.auth, sub=sub, ttl=3600, **claims)


def is_push(kind: str) -> Any:
    return lambda m: kind in m.get("push", {})


async def operator_subscribe(http: httpx.AsyncClient, user: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/v1/users/{user}/subscribe", json=body, headers=AUTHORIZED)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_the_operator_subscribe_is_a_subscribe_push_then_publications() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
        open_centrifugo(running.url(PATH), connected=False) as alice_again,
        open_centrifugo(running.url(PATH), connected=False) as writer,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await alice.connect(token=token(config, "alice"))
        await alice_again.connect(token=token(config, "alice"))
        await writer.connect(token=token(config, "w", publish=["feed", "live:ticks"]))
        await writer.call({"publish": {"channel": "feed", "data": 1}})

        answer = await operator_subscribe(http, "alice", channel="feed")
        assert answer == {"user": "alice", "channel": "feed", "subscribed": 2}
        for client in (alice, alice_again):
            push = await client.until(is_push("subscribe"))
            assert push["push"]["channel"] == "feed"
            subscribe = push["push"]["subscribe"]
            assert subscribe["recoverable"] is True and subscribe["positioned"] is True
            assert subscribe["offset"] == 1 and subscribe["epoch"]
        await writer.call({"publish": {"channel": "feed", "data": 2}})
        for client in (alice, alice_again):
            pub = (await client.until(is_push("pub")))["push"]
            assert (pub["channel"], pub["pub"]["offset"], pub["pub"]["data"]) == ("feed", 2, 2)

        # Subscribed already: nobody is subscribed twice.
        assert (await operator_subscribe(http, "alice", channel="feed"))["subscribed"] == 0
        # A namespace without history: no position to track.
        await operator_subscribe(http, "alice", channel="live:ticks")
        push = await alice.until(is_push("subscribe"))
        assert push["push"]["channel"] == "live:ticks"
        assert "recoverable" not in push["push"]["subscribe"]

        # The operator's unsubscribe ends it as before.
        response = await http.post(
            "/v1/users/alice/unsubscribe", json={"channel": "feed"}, headers=AUTHORIZED
        )
        assert response.json()["unsubscribed"] == 2
        push = await alice.until(is_push("unsubscribe"))
        assert push["push"]["unsubscribe"]["code"] == 2000


async def test_one_client_of_the_user_and_a_recovering_subscribe() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
        open_centrifugo(running.url(PATH), connected=False) as alice_again,
        open_centrifugo(running.url(PATH), connected=False) as writer,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        client_id = (await alice.connect(token=token(config, "alice")))["client"]
        await alice_again.connect(token=token(config, "alice"))
        await writer.connect(token=token(config, "w", publish=["feed"]))
        await writer.call({"publish": {"channel": "feed", "data": 1}})
        history = (await http.get("/v1/channels/feed/history", headers=AUTHORIZED)).json()
        for n in (2, 3):
            await writer.call({"publish": {"channel": "feed", "data": n}})

        since = {"offset": 1, "epoch": history["epoch"]}
        answer = await operator_subscribe(
            http, "alice", channel="feed", client=client_id, since=since
        )
        assert answer["subscribed"] == 1
        subscribe = (await alice.until(is_push("subscribe")))["push"]["subscribe"]
        assert subscribe["offset"] == 3
        # The publications after the operator's position follow the push, in order.
        pubs = [(await alice.until(is_push("pub")))["push"]["pub"] for _ in range(2)]
        assert [(p["offset"], p["data"]) for p in pubs] == [(2, 2), (3, 3)]
        # The user's other connection was not named (the hub took the subscribes in order, and
        # the named one's is done).
        assert [
            c.subscriber.channels
            for c in running.broker.connections.values()
            if c.subscriber.user == "alice" and c.id != client_id
        ] == [set()]

        # Unknown client id: nobody.
        answer = await operator_subscribe(http, "alice", channel="other", client="nobody")
        assert answer["subscribed"] == 0


async def test_bad_requests_and_the_api_key() -> None:
    config = settings(limits=LimitSettings(max_subscriptions=1))
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await alice.connect(token=token(config, "alice", subs=["one"]))
        path = "/v1/users/alice/subscribe"
        assert (await http.post(path, json={"channel": "feed"})).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key-at-all-0000000"}
        assert (await http.post(path, json={"channel": "feed"}, headers=wrong)).status_code == 401
        bad = await http.post(path, json={"channel": "bad channel"}, headers=AUTHORIZED)
        assert bad.status_code == 400 and "channel" in bad.json()["detail"]
        missing = await http.post(path, json={}, headers=AUTHORIZED)
        assert missing.status_code == 400
        bad_since = await http.post(
            path, json={"channel": "feed", "since": {"offset": -1}}, headers=AUTHORIZED
        )
        assert bad_since.status_code == 400
        # At its subscription limit (the token's ``subs`` took the only one): not subscribed.
        assert (await operator_subscribe(http, "alice", channel="feed"))["subscribed"] == 0
        (connection,) = running.broker.connections_of("alice")
        assert connection.subscriber.channels == {"one"}


async def test_the_js_sdk_gets_subscribed_then_publications() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        js_client(running.url(PATH), token=token(config, "alice")) as alice,
        open_centrifugo(running.url(PATH), connected=False) as writer,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await writer.connect(token=token(config, "w", publish=["feed"]))
        await writer.call({"publish": {"channel": "feed", "data": {"n": 1}}})
        assert (await operator_subscribe(http, "alice", channel="feed"))["subscribed"] == 1
        subscribed = await alice.event("server_subscribed")
        assert subscribed["channel"] == "feed"
        assert subscribed["recoverable"] and subscribed["positioned"]
        assert subscribed["streamPosition"]["offset"] == 1
        for n in (2, 3):
            await writer.call({"publish": {"channel": "feed", "data": {"n": n}}})
        publications = [await alice.event("server_publication") for _ in range(2)]
        assert [(p["channel"], p["offset"], p["data"]) for p in publications] == [
            ("feed", 2, {"n": 2}),
            ("feed", 3, {"n": 3}),
        ]
        response = await http.post(
            "/v1/users/alice/unsubscribe", json={"channel": "feed"}, headers=AUTHORIZED
        )
        assert response.json()["unsubscribed"] == 1
        assert (await alice.event("server_unsubscribed"))["channel"] == "feed"


class Events(ClientEventHandler):  # type: ignore[misc]
    def __init__(self) -> None:
        self.subscribed: asyncio.Queue[ServerSubscribedContext] = asyncio.Queue()
        self.publications: asyncio.Queue[ServerPublicationContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[ServerUnsubscribedContext] = asyncio.Queue()

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        await self.subscribed.put(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        await self.publications.put(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        await self.unsubscribed.put(ctx)


async def next_of(queue: asyncio.Queue[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await queue.get()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    server = RedisServer()
    await server.start()
    try:
        yield server.url
    finally:
        await server.close()


async def test_the_python_sdk_across_two_brokers_on_redis(redis_url: str) -> None:
    """The operator asks one broker; the user is connected to the other (the control path over
    Redis); publications come from the first."""
    config = settings(backplane=BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=redis_url))
    events = Events()
    async with (
        serve_broker(config) as one,
        serve_broker(config) as two,
        open_centrifugo(one.url(PATH), connected=False) as writer,
        httpx.AsyncClient(base_url=one.http(""), timeout=TIMEOUT) as http,
    ):
        await writer.connect(token=token(config, "w", publish=["feed"]))
        client = Client(two.url(PATH), events=events, token=token(config, "alice"), proxy=None)
        await client.connect()
        try:
            await client.ready(timeout=TIMEOUT)
            answer = await operator_subscribe(http, "alice", channel="feed")
            assert answer == {"user": "alice", "channel": "feed", "subscribed": 1}
            subscribed = await next_of(events.subscribed)
            assert subscribed.channel == "feed" and subscribed.recoverable
            for n in (1, 2):
                await writer.call({"publish": {"channel": "feed", "data": {"n": n}}})
            publications = [await next_of(events.publications) for _ in range(2)]
            assert [(p.channel, p.pub.offset, p.pub.data) for p in publications] == [
                ("feed", 1, {"n": 1}),
                ("feed", 2, {"n": 2}),
            ]
            response = await http.post(
                "/v1/users/alice/unsubscribe", json={"channel": "feed"}, headers=AUTHORIZED
            )
            assert response.json()["unsubscribed"] == 1
            assert (await next_of(events.unsubscribed)).channel == "feed"
        finally:
            await client.disconnect()
