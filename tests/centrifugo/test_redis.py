"""Centrifugo clients over the Redis backplane: two broker processes' worth of hubs on one Redis,
a Centrifugo client on one and a ``/v1/ws`` client on the other see the same offsets and epochs;
a stream lost in Redis is "insufficient state" (3010) for the Centrifugo client; server-side
subscriptions across the two brokers."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
from tests.centrifugo.cfclient import open_centrifugo
from tests.conftest import serve_broker
from tests.redis_server import RedisServer
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


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


#: A known defect, not a platform limit: a Centrifugo subscription on one broker while another
#: broker publishes on Redis sometimes starts at a stale offset or misses a publication (seen in
#: about one run in three on a loaded machine; never seen on /v1/ws in the same conditions).
#: Run, not skipped, so the day it is fixed shows as XPASS.
RACE = pytest.mark.xfail(
    strict=False, reason="subscribe racing publications from another broker on Redis (open)"
)


@RACE
async def test_two_brokers_two_protocols_one_stream(redis_settings: tuple[Settings, str]) -> None:
    settings, url = redis_settings
    async with (
        serve_broker(settings) as one,
        serve_broker(settings) as two,
        open_centrifugo(one.url(PATH)) as centrifugo,
        open_client(two.url()) as ours,
    ):
        subscribed = (await centrifugo.call({"subscribe": {"channel": "shared"}}))["subscribe"]
        await ours.send(Subscribe(id=1, channel="shared"))
        reply = await ours.expect(Subscribed)
        assert reply.epoch == subscribed["epoch"]
        await centrifugo.call({"publish": {"channel": "shared", "data": "c"}})
        await ours.send(Publish(id=2, channel="shared", data=msgspec.Raw(b'"v"')))
        pubs = [await centrifugo.until(lambda m: "pub" in m.get("push", {})) for _ in range(2)]
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


@RACE
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
        serve_broker(settings) as one,
        serve_broker(settings) as two,
        open_centrifugo(two.url(PATH), connected=False) as writer,
        open_centrifugo(one.url(PATH), connected=False) as alice,
    ):
        await writer.connect(token=writer_token)
        for n in range(5):
            await writer.call({"publish": {"channel": "hot", "data": n}})
        subs = (await alice.connect(token=alice_token))["subs"]
        assert set(subs) == set(channels)
        assert subs["hot"]["offset"] == 5 and subs["hot"]["recoverable"] is True
        for n in range(5, 10):
            await writer.call({"publish": {"channel": "hot", "data": n}})
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
