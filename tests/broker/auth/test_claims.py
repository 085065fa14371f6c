"""What a token's claims allow, over real sockets: channels and publish patterns, user-limited
channels, subscription tokens, namespace policies, presence, ``from``, server-side subscriptions,
refresh and expiry."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from broker.settings import (
    BackplaneKind,
    BackplaneSettings,
    NamespaceSettings,
    PublishPolicy,
    SubscribePolicy,
)
from protocol import (
    Connect,
    Disconnect,
    Error,
    History,
    HistoryResult,
    Join,
    Presence,
    PresenceResult,
    Publication,
    Publish,
    Published,
    Refresh,
    Refreshed,
    Subscribe,
    Subscribed,
    Welcome,
)
from tests.broker.auth.helpers import authed_client, closed_code, jwt_settings, raw_client
from tests.broker.auth.tokens import claims, hs256
from tests.conftest import serve_broker
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient

pytestmark = pytest.mark.anyio


async def denied(client: ProtocolClient, request_id: int) -> Error:
    error = await client.expect(Error)
    assert (error.id, error.code) == (request_id, "permission_denied")
    return error


async def test_channels_claim_patterns_decide_subscriptions_and_the_connection_stays() -> None:
    token = hs256(claims(sub="42", channels=["chat:*", "user:{sub}"]))
    async with serve_broker(jwt_settings()) as running:
        async with authed_client(running.url(), token) as client:
            await client.send(Subscribe(id=1, channel="chat:lobby"))
            await client.expect(Subscribed)
            await client.send(Subscribe(id=2, channel="user:42"))
            await client.expect(Subscribed)
            # Another user's channel, and one outside every pattern.
            await client.send(Subscribe(id=3, channel="user:43"))
            assert "user:43" in (await denied(client, 3)).message
            await client.send(Subscribe(id=4, channel="news"))
            await denied(client, 4)
            await client.send(Subscribe(id=5, channel="chat:other"))
            await client.expect(Subscribed)


async def test_publish_claim_and_from_carry_the_user_id() -> None:
    publisher = hs256(claims(sub="alice", channels=["chat:*"], publish=["chat:*"]))
    reader = hs256(claims(sub="bob", channels=["chat:*"]))
    async with serve_broker(jwt_settings()) as running:
        async with (
            authed_client(running.url(), publisher) as alice,
            authed_client(running.url(), reader) as bob,
        ):
            await bob.send(Subscribe(id=1, channel="chat:lobby"))
            await bob.expect(Subscribed)
            await bob.send(Publish(id=2, channel="chat:lobby", data=b'"no"'))  # type: ignore[arg-type]
            await denied(bob, 2)
            await alice.send(Publish(id=1, channel="chat:lobby", data=b'"hi"'))  # type: ignore[arg-type]
            await alice.expect(Published)
            message = await bob.expect(Publication)
            assert message.from_ == "alice"


async def test_user_limited_channels_admit_only_the_users_they_name() -> None:
    namespaces = {
        "dialog": NamespaceSettings(subscribe=SubscribePolicy.CLAIM, publish=PublishPolicy.CLAIM)
    }
    async with serve_broker(jwt_settings(namespaces)) as running:
        # No claims at all: the channel's name is the permission.
        async with (
            authed_client(running.url(), hs256(claims(sub="42"))) as u42,
            authed_client(running.url(), hs256(claims(sub="43"))) as u43,
            authed_client(
                running.url(), hs256(claims(sub="44", channels=["*"], publish=["*"]))
            ) as u44,
        ):
            for client in (u42, u43):
                await client.send(Subscribe(id=1, channel="dialog:dm#42,43"))
                await client.expect(Subscribed)
            await u44.send(Subscribe(id=1, channel="dialog:dm#42,43"))
            assert "limited" in (await denied(u44, 1)).message
            await u44.send(Publish(id=2, channel="dialog:dm#42,43", data=b"1"))  # type: ignore[arg-type]
            await denied(u44, 2)
            await u42.send(Publish(id=2, channel="dialog:dm#42,43", data=b"1"))  # type: ignore[arg-type]
            await u42.expect(Published)
            assert (await u43.expect(Publication)).from_ == "42"


async def test_private_namespaces_need_a_subscription_token_for_that_channel_and_user() -> None:
    namespaces = {"private": NamespaceSettings(subscribe=SubscribePolicy.TOKEN)}
    connection = hs256(claims(sub="42", channels=["*"]))
    async with serve_broker(jwt_settings(namespaces)) as running:
        async with authed_client(running.url(), connection) as client:
            await client.send(Subscribe(id=1, channel="private:room"))
            assert "subscription token" in (await denied(client, 1)).message
            wrong_channel = hs256(claims(sub="42", channel="private:other"))
            await client.send(Subscribe(id=2, channel="private:room", token=wrong_channel))
            assert "another channel" in (await denied(client, 2)).message
            other_user = hs256(claims(sub="43", channel="private:room"))
            await client.send(Subscribe(id=3, channel="private:room", token=other_user))
            assert "another user" in (await denied(client, 3)).message
            expired = hs256(claims(sub="42", channel="private:room", ttl=-30))
            await client.send(Subscribe(id=4, channel="private:room", token=expired))
            assert (await denied(client, 4)).message == "token expired"
            good = hs256(claims(sub="42", channel="private:room"))
            await client.send(Subscribe(id=5, channel="private:room", token=good))
            await client.expect(Subscribed)


async def test_presence_shows_user_and_info_and_history_needs_subscribe_permission() -> None:
    namespaces = {
        "room": NamespaceSettings(presence=True, join_leave=True, history_size=10),
        "closed": NamespaceSettings(history_size=10, history_for_subscribers=False),
    }
    alice = hs256(claims(sub="alice", channels=["room:*", "closed:*"], info={"name": "Alice"}))
    eve = hs256(claims(sub="eve", channels=["other:*"]))
    async with serve_broker(jwt_settings(namespaces)) as running:
        async with authed_client(running.url(), alice) as a, authed_client(running.url(), eve) as e:
            await a.send(Subscribe(id=1, channel="room:1"))
            await a.expect(Subscribed)
            await a.send(Presence(id=2, channel="room:1"))
            result = await a.expect(PresenceResult)
            assert [(m.user, m.info) for m in result.clients] == [("alice", {"name": "Alice"})]
            await a.send(History(id=3, channel="room:1"))
            await a.expect(HistoryResult)
            await a.send(History(id=4, channel="closed:1"))
            assert "not readable" in (await denied(a, 4)).message
            await e.send(Presence(id=1, channel="room:1"))
            await denied(e, 1)
            await e.send(History(id=2, channel="room:1"))
            await denied(e, 2)


async def test_subs_claim_subscribes_at_connect_and_join_names_the_user() -> None:
    namespaces = {"feed": NamespaceSettings(join_leave=True)}
    watcher = hs256(claims(sub="w", channels=["feed:*"]))
    token = hs256(claims(sub="s", subs=["feed:news"]))
    async with serve_broker(jwt_settings(namespaces)) as running:
        async with authed_client(running.url(), watcher) as w:
            await w.send(Subscribe(id=1, channel="feed:news"))
            await w.expect(Subscribed)
            async with authed_client(running.url(), token) as client:
                subscribed = await client.expect(Subscribed)
                assert (subscribed.id, subscribed.channel) == (0, "feed:news")
                join = await w.expect(Join)
                assert join.user == "s"


async def test_namespace_policies_authenticated_subscribers_and_anonymous() -> None:
    namespaces = {
        "open": NamespaceSettings(
            subscribe=SubscribePolicy.AUTHENTICATED, publish=PublishPolicy.SUBSCRIBERS
        ),
        "public": NamespaceSettings(anonymous=True),
    }
    async with serve_broker(jwt_settings(namespaces, anonymous_connect=True)) as running:
        async with authed_client(running.url(), hs256(claims(sub="1"))) as client:
            await client.send(Publish(id=1, channel="open:a", data=b"1"))  # type: ignore[arg-type]
            assert "only subscribers" in (await denied(client, 1)).message
            await client.send(Subscribe(id=2, channel="open:a"))
            await client.expect(Subscribed)
            await client.send(Publish(id=3, channel="open:a", data=b"1"))  # type: ignore[arg-type]
            await client.expect(Published)
        async with raw_client(running.url()) as anonymous:
            await anonymous.send(Connect(id=1))
            await anonymous.expect(Welcome)
            await anonymous.send(Subscribe(id=2, channel="open:a"))
            assert "anonymous" in (await denied(anonymous, 2)).message
            await anonymous.send(Subscribe(id=3, channel="public:news"))
            await anonymous.expect(Subscribed)


async def test_refresh_moves_the_expiry_and_expiry_closes_with_4001_reconnect() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with authed_client(running.url(), hs256(claims(sub="42", ttl=2))) as client:
            later = hs256(claims(sub="42", ttl=600))
            await client.send(Refresh(id=1, token=later))
            refreshed = await client.expect(Refreshed)
            assert refreshed.expires_at == pytest.approx(time.time() + 600, abs=5)
            # The first token's expiry passes: the connection stays.
            await client.send(Subscribe(id=2, channel="x"))
            await denied(client, 2)
            await asyncio.sleep(3.0)  # the expiry under test is wall-clock time
            await client.send(Refresh(id=3, token=later))
            await client.expect(Refreshed)
        async with authed_client(running.url(), hs256(claims(sub="42", ttl=1))) as client:
            notice = await client.expect(Disconnect, timeout=5)
            assert (notice.code, notice.reason, notice.reconnect) == (4001, "token expired", True)
            assert await closed_code(client) == 4001


async def test_a_refresh_with_another_users_token_is_refused_and_closes() -> None:
    async with serve_broker(jwt_settings()) as running:
        async with authed_client(running.url(), hs256(claims(sub="42"))) as client:
            await client.send(Refresh(id=1, token=hs256(claims(sub="43"))))
            error = await client.expect(Error)
            assert (error.id, error.code) == (1, "unauthorized")
            notice = await client.expect(Disconnect)
            assert (notice.code, notice.reconnect) == (4001, False)
            assert await closed_code(client) == 4001


async def test_on_redis_presence_carries_user_and_info_between_brokers(
    redis_server: RedisServer,
) -> None:
    settings = msgspec.structs.replace(
        jwt_settings({"room": NamespaceSettings(presence=True)}),
        backplane=BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=redis_server.url),
    )
    alice = hs256(claims(sub="alice", channels=["room:*"], info={"name": "Alice"}))
    bob = hs256(claims(sub="bob", channels=["room:*"]))
    async with serve_broker(settings) as first, serve_broker(settings) as second:
        async with authed_client(first.url(), alice) as a, authed_client(second.url(), bob) as b:
            await a.send(Subscribe(id=1, channel="room:1"))
            await a.expect(Subscribed)
            await b.send(Subscribe(id=1, channel="room:1"))
            await b.expect(Subscribed)
            await b.send(Presence(id=2, channel="room:1"))
            members = (await b.expect(PresenceResult)).clients
            assert sorted((m.user, m.info) for m in members) == [
                ("alice", {"name": "Alice"}),
                ("bob", None),
            ]
