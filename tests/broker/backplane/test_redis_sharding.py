"""Channels sharded across several redis-servers: delivered from each, and one shard down
makes only its channels unavailable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from protocol import (
    Encoding,
    Error,
    Publish,
    Published,
)
from tests.broker.backplane.redis_helpers import (
    PREFIX,
    brokers,
    on_redis,
    redis_client,
    text,
    wait_readyz,
)
from tests.broker.backplane.test_behaviour import (
    clients,
    publish,
    raw,
    receive,
    subscribe,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


# --- sharding -----------------------------------------------------------------------------------


CHANNELS = [f"h:shard-{i}" for i in range(8)]


@asynccontextmanager
async def second_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_channels_are_sharded_across_redis_servers_and_delivered_from_both(
    redis_server: RedisServer,
) -> None:
    async with (
        second_redis() as other,
        brokers(on_redis(redis_server.url, other.url), 2) as (a, b),
        clients(a.url(), Encoding.JSON, Encoding.MSGPACK) as (pub_a, sub_a),
        clients(b.url(), Encoding.MSGPACK, Encoding.JSON) as (pub_b, sub_b),
        redis_client(redis_server.url) as first_redis,
        redis_client(other.url) as second_redis_client,
    ):
        for sub in (sub_a, sub_b):
            for n, channel in enumerate(CHANNELS):
                await subscribe(sub, channel, request_id=n + 1)
        for i in range(1, 5):
            for channel in CHANNELS:
                await publish(pub_a if i % 2 else pub_b, channel, i, i)
        for sub in (sub_a, sub_b):
            got = await receive(sub, 4 * len(CHANNELS))
            for channel in CHANNELS:
                assert [(m.offset, sub.data(m.data)) for m in got if m.channel == channel] == [
                    (i, i) for i in range(1, 5)
                ]
        shards: list[set[str]] = []
        for redis in (first_redis, second_redis_client):
            keys = await redis.keys(f"{PREFIX}:m:*")
            shards.append({text(key).removeprefix(f"{PREFIX}:m:") for key in keys})
        assert shards[0] and shards[1], f"every channel on one server: {shards}"
        assert shards[0] | shards[1] == set(CHANNELS)
        assert not shards[0] & shards[1]


async def test_one_shard_down_makes_the_broker_unready_and_only_its_channels_unavailable(
    redis_server: RedisServer,
) -> None:
    async with (
        second_redis() as other,
        brokers(on_redis(redis_server.url, other.url), 1) as (a,),
        clients(a.url(), Encoding.JSON) as (pub,),
        redis_client(redis_server.url) as first_redis,
    ):
        for n, channel in enumerate(CHANNELS):
            await publish(pub, channel, "hello", n + 1)
        on_other = {
            channel for channel in CHANNELS if not await first_redis.exists(f"{PREFIX}:m:{channel}")
        }
        await other.stop()

        await wait_readyz(a, 503)
        for n, channel in enumerate(CHANNELS):
            await pub.send(Publish(id=100 + n, channel=channel, data=raw(pub, "again")))
            reply = await pub.recv()
            if channel in on_other:
                assert isinstance(reply, Error) and reply.code == "unavailable", reply
            else:
                assert isinstance(reply, Published) and reply.offset == 2, reply
