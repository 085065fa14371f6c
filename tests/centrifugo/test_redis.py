"""Centrifugo clients over the Redis backplane: two broker processes' worth of hubs on one Redis,
a Centrifugo client on one and a ``/v1/ws`` client on the other see the same offsets and epochs;
a stream lost in Redis is "insufficient state" (3010) for the Centrifugo client; server-side
subscriptions across the two brokers.

Every broker here is ready (its Redis link up, ``/readyz`` 200) before a client connects: a
broker that is not ready yet refuses publishes with ``unavailable`` (docs/scaleout.md), which is
not what these tests are about. A subscribe racing publications from another broker is
``tests/broker/backplane/test_subscribe_interleaving.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio

from broker.auth.tokens import issue_token
from broker.settings import (
    AuthMode,
    AuthSettings,
    BackplaneKind,
    BackplaneSettings,
    NamespaceSettings,
    Settings,
)
from protocol import Publication, Publish, Published, Subscribe, Subscribed
from tests.broker.auth.tokens import SECRET
from tests.broker.backplane.test_behaviour import serve_ready
from tests.centrifugo.cfclient import CentrifugoClient, open_centrifugo
from tests.redis_server import RedisServer
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


async def publish_and_collect(
    client: CentrifugoClient, channel: str, data: str
) -> list[dict[str, Any]]:
    """Publish and wait for the reply (a success); the publication pushes that came before it."""
    (request,) = await client.send({"publish": {"channel": channel, "data": data}})
    pushes = []
    while (message := await client.receive()).get("id") != request:
        if "pub" in message.get("push", {}):
            pushes.append(message)
    assert "publish" in message, message
    return pushes


@pytest.fixture
async def redis_settings() -> AsyncIterator[tuple[Settings, str]]:
    server = RedisServer()
    await server.start()
    try:
        settings = Settings(
            default_namespace=NamespaceSettings(history_size=100),
            backplane=BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=server.url),
        )
        yield settings, server.url
    finally:
        await server.close()


async def test_two_brokers_two_protocols_one_stream(redis_settings: tuple[Settings, str]) -> None:
    settings, url = redis_settings
    async with (
        serve_ready(settings) as one,
        serve_ready(settings) as two,
        open_centrifugo(one.url(PATH)) as centrifugo,
        open_client(two.url()) as ours,
    ):
        subscribed = (await centrifugo.call({"subscribe": {"channel": "shared"}}))["subscribe"]
        await ours.send(Subscribe(id=1, channel="shared"))
        reply = await ours.expect(Subscribed)
        assert reply.epoch == subscribed["epoch"]
        # Its own publication may come before or after the reply (docs/protocol.md).
        pubs = await publish_and_collect(centrifugo, "shared", "c")
        await ours.send(Publish(id=2, channel="shared", data=msgspec.Raw(b'"v"')))
        while len(pubs) < 2:
            pubs.append(await centrifugo.until(lambda m: "pub" in m.get("push", {})))
        assert [(p["push"]["pub"]["offset"], p["push"]["pub"]["data"]) for p in pubs] == [
            (1, "c"),
            (2, "v"),
        ]
        seen: list[Publication] = []
        while len(seen) < 2:
            message = await ours.recv()
            if isinstance(message, Publication):
                seen.append(message)
        assert [(p.offset, p.epoch) for p in seen] == [(1, reply.epoch), (2, reply.epoch)]

        # The stream is lost (Redis emptied): the next publication starts a new epoch, which the
        # Centrifugo client cannot follow from its position: 3010, reconnect and resubscribe.
        client = redis.asyncio.from_url(url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        await ours.send(Publish(id=3, channel="shared", data=msgspec.Raw(b'"after"')))
        while not isinstance(answer := await ours.recv(), Published):
            pass
        assert answer.epoch != reply.epoch
        disconnect = await centrifugo.until(lambda m: "disconnect" in m.get("push", {}))
        assert disconnect["push"]["disconnect"] == {
            "code": 3010,
            "reason": "insufficient state",
            "reconnect": True,
        }


async def test_server_side_subscriptions_over_redis(redis_settings: tuple[Settings, str]) -> None:
    """A token's ``subs`` on one broker, publications from the other: the connect reply has every
    channel at the stream's position, then the publications follow in order; and a reconnect to
    the other broker recovers from the position the SDK would send."""
    settings, _ = redis_settings
    settings = msgspec.structs.replace(
        settings, auth=AuthSettings(mode=AuthMode.JWT, hmac_secrets=[SECRET])
    )
    channels = ["hot"] + [f"quiet{n}" for n in range(30)]
    alice_token = issue_token(settings.auth, sub="alice", ttl=3600, subs=channels)
    writer_token = issue_token(settings.auth, sub="w", ttl=3600, publish=["hot"])
    async with (
        serve_ready(settings) as one,
        serve_ready(settings) as two,
        open_centrifugo(two.url(PATH), connected=False) as writer,
        open_centrifugo(one.url(PATH), connected=False) as alice,
    ):
        await writer.connect(token=writer_token)
        for n in range(5):
            assert "publish" in await writer.call({"publish": {"channel": "hot", "data": n}})
        subs = (await alice.connect(token=alice_token))["subs"]
        assert set(subs) == set(channels)
        assert subs["hot"]["offset"] == 5 and subs["hot"]["recoverable"] is True
        for n in range(5, 10):
            assert "publish" in await writer.call({"publish": {"channel": "hot", "data": n}})
        offsets: list[int] = []
        while len(offsets) < 5:
            push = await alice.until(lambda m: "pub" in m.get("push", {}))
            offsets.append(push["push"]["pub"]["offset"])
        assert offsets == [6, 7, 8, 9, 10]
        async with open_centrifugo(two.url(PATH), connected=False) as again:
            position = {"recover": True, "offset": 7, "epoch": subs["hot"]["epoch"]}
            result = await again.connect(token=alice_token, subs={"hot": position})
            hot = result["subs"]["hot"]
            assert hot["recovered"] is True
            assert [p["offset"] for p in hot["publications"]] == [8, 9, 10]
