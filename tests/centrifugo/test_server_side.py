"""``/connection/websocket`` at the protocol level: server-side subscriptions from the connection
token's ``subs``, the expiry of subscription tokens (and ``sub_refresh``), the operator's
unsubscribe of a user, and history from a position in another epoch (error 112)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest

from broker.auth.tokens import issue_token
from broker.settings import (
    ApiSettings,
    AuthMode,
    AuthSettings,
    LimitSettings,
    NamespaceSettings,
    Settings,
    SubscribePolicy,
)
from tests.broker.auth.tokens import SECRET
from tests.centrifugo.cfclient import CentrifugoClient, open_centrifugo
from tests.conftest import TIMEOUT, serve_broker

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


def settings() -> Settings:
    return Settings(
        # No leeway: a subscription ends when its token says.
        auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET], leeway=0),
        default_namespace=NamespaceSettings(history_size=100),
        namespaces={
            "private": NamespaceSettings(subscribe=SubscribePolicy.TOKEN, history_size=10),
            "live": NamespaceSettings(),
        },
    )


def token(running_settings: Settings, sub: str, ttl: float = 3600, **claims: Any) -> str:
    return issue_token(running_settings.auth, sub=sub, ttl=ttl, **claims)


async def connected(client: CentrifugoClient, token_: str, **request: Any) -> dict[str, Any]:
    return await client.connect(token=token_, **request)


async def test_token_subs_are_in_the_connect_reply_and_publish_as_pushes() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
        open_centrifugo(running.url(PATH), connected=False) as writer,
    ):
        result = await connected(alice, token(config, "alice", subs=["feed", "live:ticks"]))
        subs = result["subs"]
        assert set(subs) == {"feed", "live:ticks"}
        feed = subs["feed"]
        assert feed["recoverable"] is True and feed["positioned"] is True and feed["epoch"]
        # A namespace without history: no position to track.
        assert "recoverable" not in subs["live:ticks"] and subs["live:ticks"]["epoch"]
        await connected(writer, token(config, "writer", publish=["feed"]))
        await writer.call({"publish": {"channel": "feed", "data": {"n": 1}}})
        push = await alice.until(lambda m: "pub" in m.get("push", {}))
        assert push["push"]["channel"] == "feed"
        assert push["push"]["pub"]["offset"] == 1 and push["push"]["pub"]["data"] == {"n": 1}


async def test_server_side_subs_recover_on_reconnect() -> None:
    config = settings()
    alice_token = token(config, "alice", subs=["feed"])
    async with serve_broker(config) as running:
        async with open_centrifugo(running.url(PATH), connected=False) as writer:
            await connected(writer, token(config, "writer", publish=["feed"]))
            async with open_centrifugo(running.url(PATH), connected=False) as first:
                epoch = (await connected(first, alice_token))["subs"]["feed"]["epoch"]
                await writer.call({"publish": {"channel": "feed", "data": 1}})
                await first.until(lambda m: "pub" in m.get("push", {}))
            for n in (2, 3):
                await writer.call({"publish": {"channel": "feed", "data": n}})
        async with open_centrifugo(running.url(PATH), connected=False) as second:
            position = {"recover": True, "offset": 1, "epoch": epoch}
            feed = (await connected(second, alice_token, subs={"feed": position}))["subs"]["feed"]
            assert feed["recovered"] is True and feed["was_recovering"] is True
            assert [(p["offset"], p["data"]) for p in feed["publications"]] == [(2, 2), (3, 3)]
            assert (feed["offset"], feed["epoch"]) == (3, epoch)
        async with open_centrifugo(running.url(PATH), connected=False) as third:
            lost = {"recover": True, "offset": 1, "epoch": "another"}
            feed = (await connected(third, alice_token, subs={"feed": lost}))["subs"]["feed"]
            assert feed.get("recovered", False) is False and feed["was_recovering"] is True
            assert feed["epoch"] == epoch and feed["offset"] == 3


async def test_a_refused_server_side_sub_leaves_the_others() -> None:
    config = msgspec.structs.replace(settings(), limits=LimitSettings(max_subscriptions=1))
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        result = await connected(alice, token(config, "alice", subs=["one", "two"]))
        assert list(result["subs"]) == ["one"]
        assert (await alice.call({"ping": {}}))["ping"] == {}


async def test_an_expired_subscription_token_ends_the_subscription() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        await connected(alice, token(config, "alice"))
        sub_token = token(config, "alice", ttl=2, channel="private:room")
        started = time.time()
        reply = await alice.call({"subscribe": {"channel": "private:room", "token": sub_token}})
        assert reply["subscribe"]["expires"] is True and 1 <= reply["subscribe"]["ttl"] <= 2
        push = await alice.until(lambda m: "unsubscribe" in m.get("push", {}))
        assert push["push"] == {
            "channel": "private:room",
            "unsubscribe": {"code": 2501, "reason": "subscription expired"},
        }
        assert time.time() - started >= 1
        connection = next(iter(running.broker.connections.values()))
        assert "private:room" not in connection.subscriber.channels
        # The connection stays, and an expired token is error 109: the SDK gets a new one.
        assert (await alice.call({"ping": {}}))["ping"] == {}
        await asyncio.sleep(max(0.0, started + 2.5 - time.time()))  # past exp: no event
        again = await alice.call({"subscribe": {"channel": "private:room", "token": sub_token}})
        assert again["error"]["code"] == 109


async def test_sub_refresh_extends_the_subscription() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        await connected(alice, token(config, "alice"))
        short = token(config, "alice", ttl=2, channel="private:room")
        await alice.call({"subscribe": {"channel": "private:room", "token": short}})
        longer = token(config, "alice", ttl=60, channel="private:room")
        request = {"channel": "private:room", "token": longer}
        refreshed = (await alice.call({"sub_refresh": request}))["sub_refresh"]
        assert refreshed["expires"] is True and refreshed["ttl"] > 50
        other = token(config, "alice", ttl=60, channel="private:other")
        wrong = await alice.call({"sub_refresh": {"channel": "private:room", "token": other}})
        assert wrong["error"]["code"] == 103
        # Past the first token's life the subscription is still there: nothing was pushed.
        await asyncio.sleep(3)  # the expiry under test is wall-clock time: nothing to await
        connection = next(iter(running.broker.connections.values()))
        assert "private:room" in connection.subscriber.channels
        assert (await alice.call({"ping": {}}))["ping"] == {}
        assert not any("unsubscribe" in m.get("push", {}) for m in alice.pending)


async def test_history_since_another_epoch_is_unrecoverable_position() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        await connected(alice, token(config, "alice", channels=["h"], publish=["h"]))
        for n in (1, 2, 3):
            await alice.call({"publish": {"channel": "h", "data": n}})
        epoch = (await alice.call({"history": {"channel": "h"}}))["history"]["epoch"]
        for reverse in (False, True):
            since = {"offset": 1, "epoch": "not-" + epoch}
            request = {"channel": "h", "limit": 10, "since": since, "reverse": reverse}
            reply = await alice.call({"history": request})
            assert reply["error"]["code"] == 112, reply
            assert reply["error"]["message"] == "unrecoverable position"
        same = {"channel": "h", "limit": 10, "since": {"offset": 1, "epoch": epoch}}
        reply = await alice.call({"history": same})
        assert [p["offset"] for p in reply["history"]["publications"]] == [2, 3]


async def test_connect_without_subs_in_the_token_has_none() -> None:
    config = settings()
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        async with asyncio.timeout(TIMEOUT):
            result = await connected(alice, token(config, "alice"))
        assert "subs" not in result


async def test_the_operator_unsubscribing_a_user_is_an_unsubscribe_push() -> None:
    key = "operator-key-0123456789abcdef"
    config = msgspec.structs.replace(settings(), api=ApiSettings(keys=[key]))
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as alice,
        httpx.AsyncClient(base_url=running.http(""), timeout=TIMEOUT) as http,
    ):
        await connected(alice, token(config, "alice", channels=["room"]))
        await alice.call({"subscribe": {"channel": "room"}})
        response = await http.post(
            "/v1/users/alice/unsubscribe",
            json={"channel": "room"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.json()["unsubscribed"] == 1
        push = await alice.until(lambda m: "push" in m)
        assert push["push"] == {
            "channel": "room",
            "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
        }


async def test_publications_during_connect_follow_the_reply_without_a_gap() -> None:
    config = settings()
    channels = ["hot"] + [f"quiet{n}" for n in range(50)]
    async with (
        serve_broker(config) as running,
        open_centrifugo(running.url(PATH), connected=False) as writer,
        open_centrifugo(running.url(PATH), connected=False) as alice,
    ):
        await connected(writer, token(config, "writer", publish=["hot"]))

        async def flood() -> None:
            for n in range(200):
                await writer.send({"publish": {"channel": "hot", "data": n}})

        await writer.call({"publish": {"channel": "hot", "data": "first"}})
        await alice.send({"connect": {"token": token(config, "alice", subs=channels)}})
        # Publishing while the 51 subscribes are made. (In one process the hub makes them in one
        # turn, so this does not force a publication between them; the connection holds back
        # anything rendered before the connect reply if one comes.)
        task = asyncio.create_task(flood())
        try:
            # The connect reply comes first, whatever was published meanwhile.
            reply = await alice.receive()
            assert "connect" in reply, reply
            hot = reply["connect"]["subs"]["hot"]
            assert len(reply["connect"]["subs"]) == len(channels)
            await task
        finally:
            task.cancel()
        offsets: list[int] = []
        while len(offsets) < 201 - hot["offset"]:
            push = await alice.until(lambda m: "pub" in m.get("push", {}))
            offsets.append(push["push"]["pub"]["offset"])
        # Every publication after the reply's position, once, in order.
        assert offsets == list(range(hot["offset"] + 1, 202))
