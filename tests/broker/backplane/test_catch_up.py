"""Recovery is about the channel, not the process: a process whose pub/sub link lost publications
(and has not read them back yet) still recovers a client whose ``since`` is ahead of what that
process delivered, from what Redis holds; and catches its own subscribers up on the way.

The process that falls behind connects to Redis as a user of its own; taking that user's pub/sub
channel permissions away (``ACL SETUSER ... resetchannels``) and killing its pub/sub connection
leaves its commands working while its pub/sub link cannot come back, so it stays behind for as
long as the test needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from protocol import Encoding, Publication, StreamPosition
from tests.broker.backplane.redis_helpers import (
    USER,
    allow_cutoff_user,
    command,
    cutoff_url,
    on_redis,
    redis_client,
    wait_readyz,
)
from tests.broker.backplane.test_behaviour import (
    assert_alive,
    clients,
    publish,
    receive,
    serve_ready,
    subscribe,
)
from tests.conftest import RunningBroker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio


async def deafen(redis: aioredis.Redis) -> None:
    """The cut-off user may no longer use pub/sub, and its pub/sub connection is killed."""
    await command(redis, "ACL", "SETUSER", USER, "resetchannels")
    await command(redis, "CLIENT", "KILL", "TYPE", "pubsub", "USER", USER)


@asynccontextmanager
async def behind(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[aioredis.Redis, RunningBroker, RunningBroker]]:
    """Broker ``a`` (healthy) and broker ``b`` (whose pub/sub the test can take away)."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as a,
            serve_ready(on_redis(cutoff_url(redis_server))) as b,
        ):
            yield redis, a, b


async def test_a_since_ahead_of_a_lagging_process_is_recovered_from_the_stream(
    redis_server: RedisServer,
) -> None:
    async with (
        behind(redis_server) as (redis, a, b),
        clients(a.url(), Encoding.JSON) as (pub,),
        clients(b.url(), Encoding.MSGPACK, Encoding.JSON, Encoding.JSON) as (old, late, later),
    ):
        await subscribe(old, "h:feed")
        first = await publish(pub, "h:feed", 1, 1)
        assert [m.offset for m in await receive(old, 1)] == [1]
        await deafen(redis)
        await wait_readyz(b, 503)
        replies = [await publish(pub, "h:feed", i, i) for i in range(2, 5)]
        epoch = first.epoch
        # The newest offset: nothing to send, but recovered.
        reply = await subscribe(late, "h:feed", since=StreamPosition(offset=4, epoch=epoch))
        assert (reply.recovered, reply.epoch, reply.offset, reply.publications) == (
            True,
            epoch,
            4,
            [],
        )
        # An offset between what b delivered and the head: exactly what was missed.
        reply = await subscribe(later, "h:feed", since=StreamPosition(offset=2, epoch=epoch))
        assert (reply.recovered, reply.offset) == (True, 4)
        assert [(p.offset, later.data(p.data)) for p in reply.publications] == [(3, 3), (4, 4)]
        # b caught up on the way: its old subscriber got what b's link lost, once, in order.
        got = await receive(old, 3)
        assert [(m.offset, m.epoch) for m in got] == [(r.offset, epoch) for r in replies]

        await allow_cutoff_user(redis)
        await wait_readyz(b, 200)
        live = await publish(pub, "h:feed", 5, 5)
        for client in (old, late, later):
            message = await client.expect(Publication)
            assert (message.offset, message.epoch) == (live.offset, epoch)
            await assert_alive(client)


async def test_a_since_beyond_the_channels_head_is_not_recovered(
    redis_server: RedisServer,
) -> None:
    async with (
        behind(redis_server) as (redis, a, b),
        clients(a.url(), Encoding.JSON) as (pub,),
        clients(b.url(), Encoding.JSON, Encoding.JSON, Encoding.JSON) as (old, liar, stale),
    ):
        await subscribe(old, "h:feed")
        first = await publish(pub, "h:feed", 1, 1)
        await deafen(redis)
        await publish(pub, "h:feed", 2, 2)
        since = StreamPosition(offset=9, epoch=first.epoch)
        reply = await subscribe(liar, "h:feed", since=since)
        assert (reply.recovered, reply.epoch, reply.offset) == (False, first.epoch, 2)
        other = StreamPosition(offset=1, epoch="not-the-epoch")
        reply = await subscribe(stale, "h:feed", since=other)
        assert (reply.recovered, reply.epoch, reply.offset) == (False, first.epoch, 2)
        assert [m.offset for m in await receive(old, 2)] == [1, 2]
