"""Centrifugo clients over the Redis backplane: two broker processes' worth of hubs on one Redis,
a Centrifugo client on one and a ``/v1/ws`` client on the other see the same offsets and epochs;
a stream lost in Redis is "insufficient state" (3010) for the Centrifugo client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio

from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import Publication, Publish, Published, Subscribe, Subscribed
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
