"""The Redis backplane's own behaviour, with real redis-servers: several brokers as one,
pub/sub only for watched channels, presence across brokers and after a death (outages:
``test_redis_outages.py``; sharding: ``test_redis_sharding.py``).

Several ``serve_broker`` in one test are separate brokers (each its own backplane, its own
process id in Redis) sharing one Redis, as separate processes would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack

import pytest

from protocol import (
    Encoding,
    Join,
    Leave,
    Publish,
    Published,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.broker.backplane.redis_helpers import (
    PREFIX,
    brokers,
    eventually,
    numsub,
    on_redis,
    presence_of,
    redis_client,
    text,
    wait_readyz,
)
from tests.broker.backplane.test_behaviour import (
    assert_alive,
    client_id,
    clients,
    publish,
    raw,
    receive,
    serve_ready,
    subscribe,
)
from tests.broker.test_cli import broker_process, free_port
from tests.conftest import TIMEOUT
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


# --- several brokers as one ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3], ids=["two-brokers", "three-brokers"])
async def test_subscribers_on_every_broker_get_every_publication_in_one_order(
    redis_server: RedisServer, count: int
) -> None:
    per_publisher = 30
    total = per_publisher * count
    async with brokers(on_redis(redis_server.url), count) as running, AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(open_client(r.url(), encoding))
            for r in running
            for encoding in Encoding
        ]
        pubs = [await stack.enter_async_context(open_client(r.url())) for r in running]
        for sub in subs:
            assert (await subscribe(sub, "h:ticks")).offset == 0

        async def publish_all(pub: ProtocolClient, k: int) -> None:
            for i in range(per_publisher):
                await publish(pub, "h:ticks", f"{k}-{i}", i + 1)

        # One publisher on every broker, all at once: Redis alone decides the order.
        async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
            for k, pub in enumerate(pubs):
                tasks.create_task(publish_all(pub, k))
        sequences = [
            [(m.offset, m.epoch, sub.data(m.data)) for m in await receive(sub, total)]
            for sub in subs
        ]
        assert [offset for offset, _, _ in sequences[0]] == list(range(1, total + 1))
        assert len({epoch for _, epoch, _ in sequences[0]}) == 1
        for sequence in sequences[1:]:
            assert sequence == sequences[0]
        data = [d for _, _, d in sequences[0]]
        for k in range(count):
            assert [d for d in data if d.startswith(f"{k}-")] == [
                f"{k}-{i}" for i in range(per_publisher)
            ]


async def test_a_client_recovers_on_another_broker_exactly_what_it_missed(
    redis_server: RedisServer,
) -> None:
    async with (
        brokers(on_redis(redis_server.url), 2) as (a, b),
        clients(a.url(), Encoding.JSON) as (pub,),
    ):
        async with open_client(a.url(), Encoding.MSGPACK) as sub:
            await subscribe(sub, "h:feed")
            for i in range(1, 4):
                await publish(pub, "h:feed", i, i)
            last = (await receive(sub, 3))[-1]
        for i in range(4, 9):  # missed while away
            await publish(pub, "h:feed", i, i)
        async with open_client(b.url(), Encoding.MSGPACK) as back:
            since = StreamPosition(offset=last.offset, epoch=last.epoch)
            reply = await subscribe(back, "h:feed", since=since)
            assert (reply.recovered, reply.epoch, reply.offset) == (True, last.epoch, 8)
            assert [(p.offset, back.data(p.data)) for p in reply.publications] == [
                (i, i) for i in range(4, 9)
            ]
            await publish(pub, "h:feed", 9, 9)  # on broker a, live to broker b
            (live,) = await receive(back, 1)
            assert (live.offset, live.epoch, back.data(live.data)) == (9, last.epoch, 9)


async def test_a_subscriber_on_another_broker_starts_at_the_channels_latest_offset(
    redis_server: RedisServer,
) -> None:
    async with (
        brokers(on_redis(redis_server.url), 2) as (a, b),
        clients(a.url(), Encoding.JSON) as (pub,),
        clients(b.url(), Encoding.JSON) as (sub,),
    ):
        replies = [await publish(pub, "news", i, i) for i in range(1, 4)]
        reply = await subscribe(sub, "news")
        assert (reply.offset, reply.epoch) == (3, replies[0].epoch)
        await publish(pub, "news", 4, 4)
        assert [m.offset for m in await receive(sub, 1)] == [4]


async def test_a_broker_subscribes_in_redis_only_to_channels_it_has_local_subscribers_for(
    redis_server: RedisServer,
) -> None:
    async with (
        brokers(on_redis(redis_server.url), 2) as (a, b),
        redis_client(redis_server.url) as redis,
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (a1, a2),
        clients(b.url(), Encoding.JSON) as (b1,),
    ):

        async def subscribed_brokers(n: int) -> None:
            async def check() -> bool:
                return await numsub(redis, "news") == n

            await eventually(check)

        assert await numsub(redis, "news") == 0
        await subscribe(a1, "news")
        await subscribed_brokers(1)
        await subscribe(a2, "news")  # a second local subscriber: still one Redis subscription
        await subscribe(b1, "news")
        await subscribed_brokers(2)
        await a1.send(Unsubscribe(id=2, channel="news"))
        await a1.expect(Unsubscribed)
        await assert_alive(a1)
        assert await numsub(redis, "news") == 2  # a2 still wants it on broker a
        await a2.ws.close()  # the last one on broker a goes away without unsubscribing
        await subscribed_brokers(1)
        await b1.send(Unsubscribe(id=2, channel="news"))
        await b1.expect(Unsubscribed)
        await subscribed_brokers(0)
        live = [text(c) for c in await redis.pubsub_channels(f"{PREFIX}:c:*")]
        assert live == []
        # Still served: a publication reaches a subscriber who comes back.
        await subscribe(b1, "news", request_id=3)
        await publish(a1, "news", "again", 4)
        assert [b1.data(m.data) for m in await receive(b1, 1)] == ["again"]


async def test_subscribing_again_right_after_unsubscribing_is_answered_and_delivered(
    redis_server: RedisServer,
) -> None:
    """The channel is unwatched and watched again before the pub/sub connection has caught up, so
    its Redis subscription never lapses: the subscribe must be answered all the same."""
    async with (
        brokers(on_redis(redis_server.url), 1) as (a,),
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (sub, pub),
    ):
        await subscribe(sub, "news")
        for n in range(5):
            await sub.send(Unsubscribe(id=2, channel="news"))
            await sub.send(Subscribe(id=3, channel="news"))
            assert await sub.expect(Unsubscribed) == Unsubscribed(id=2, channel="news")
            await sub.expect(Subscribed, timeout=TIMEOUT / 2)
            published = await publish(pub, "news", n, 4)
            (message,) = await receive(sub, 1)
            assert (message.offset, sub.data(message.data)) == (published.offset, n)


async def test_a_burst_of_publishes_from_many_clients_at_once_is_never_refused_while_redis_is_up(
    redis_server: RedisServer,
) -> None:
    """More publishes in flight at once than a Redis connection pool holds: they wait their turn;
    none answers ``unavailable`` while Redis is healthy."""
    burst = 200
    async with (
        brokers(on_redis(redis_server.url), 1) as (a,),
        clients(a.url(), Encoding.MSGPACK) as (sub,),
        AsyncExitStack() as stack,
    ):
        await subscribe(sub, "news")
        pubs = [await stack.enter_async_context(open_client(a.url())) for _ in range(burst)]
        for n, pub in enumerate(pubs):
            await pub.send(Publish(id=n, channel="news", data=raw(pub, n)))
        replies = [await pub.recv() for pub in pubs]
        refused = [reply for reply in replies if not isinstance(reply, Published)]
        assert refused == []
        offsets = sorted(reply.offset for reply in replies if isinstance(reply, Published))
        assert offsets == list(range(1, burst + 1))
        assert [m.offset for m in await receive(sub, burst)] == offsets


# --- presence -----------------------------------------------------------------------------------


async def test_presence_lists_the_members_of_every_broker_and_join_leave_cross_brokers(
    redis_server: RedisServer,
) -> None:
    async with (
        brokers(on_redis(redis_server.url), 2) as (a, b),
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (on_a, asker),
        clients(b.url(), Encoding.MSGPACK) as (on_b,),
    ):
        await subscribe(on_a, "p:lobby")
        await subscribe(on_b, "p:lobby")
        assert await on_a.recv() == Join(channel="p:lobby", client=client_id(on_b), user=None)
        assert await presence_of(asker, "p:lobby") == sorted([client_id(on_a), client_id(on_b)])
        await on_b.send(Unsubscribe(id=2, channel="p:lobby"))
        # ``on_a``'s own join is announced through Redis after its ``subscribed`` (the hub
        # spawns the announcement): it may reach broker b after ``on_b`` subscribed there, and
        # then ``on_b`` rightly sees it before its reply.
        reply = await on_b.recv()
        if reply == Join(channel="p:lobby", client=client_id(on_a), user=None):
            reply = await on_b.recv()
        assert isinstance(reply, Unsubscribed), reply
        assert await on_a.recv() == Leave(channel="p:lobby", client=client_id(on_b), user=None)
        assert await presence_of(asker, "p:lobby") == [client_id(on_a)]


async def test_the_members_of_a_broker_killed_with_sigkill_vanish_after_presence_ttl(
    redis_server: RedisServer,
) -> None:
    ttl = 0.6
    port = free_port()
    env = {
        "BROKER_BACKPLANE__KIND": "redis",
        "BROKER_BACKPLANE__REDIS_URL": redis_server.url,
        "BROKER_BACKPLANE__PRESENCE_TTL": str(ttl),
        "BROKER_NAMESPACES__P__PRESENCE": "true",
    }
    async with (
        serve_ready(on_redis(redis_server.url, presence_ttl=ttl)) as survivor,
        clients(survivor.url(), Encoding.JSON, Encoding.JSON) as (member, asker),
        broker_process("serve", "--port", str(port), **env) as doomed,
    ):
        await subscribe(member, "p:lobby")
        await wait_readyz(port, 200)
        async with open_client(f"ws://127.0.0.1:{port}/v1/ws") as ghost:
            await subscribe(ghost, "p:lobby")
            expected = sorted([client_id(member), client_id(ghost)])

            async def both_listed() -> bool:
                # Presence is written to Redis just after ``subscribed`` is sent: it shows on
                # another broker a moment later.
                return await presence_of(asker, "p:lobby") == expected

            await eventually(both_listed)
            doomed.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await doomed.wait()

        async def ghost_gone() -> bool:
            return await presence_of(asker, "p:lobby") == [client_id(member)]

        await eventually(ghost_gone)
        assert time.monotonic() - killed < ttl + 1.0
        await asyncio.sleep(3 * ttl)  # time is the behaviour: the living broker renews its own
        assert await presence_of(asker, "p:lobby") == [client_id(member)]
