"""The Redis backplane's own behaviour, with real redis-servers: several brokers as one,
pub/sub only for watched channels, presence across brokers and after a death, outages, sharding.

Several ``serve_broker`` in one test are separate brokers (each its own backplane, its own
process id in Redis) sharing one Redis, as separate processes would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import (
    Encoding,
    Error,
    Gap,
    History,
    Join,
    Leave,
    Presence,
    PresenceResult,
    Publication,
    Publish,
    Published,
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
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
from tests.conftest import TIMEOUT, RunningBroker
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

PREFIX = "broker"
NAMESPACES = {
    "h": NamespaceSettings(history_size=1000),
    "small": NamespaceSettings(history_size=3),
    "p": NamespaceSettings(presence=True, join_leave=True),
}
#: A Redis user of its own for the broker a test cuts off, so that only its connections break.
USER, PASSWORD = "cutoff", "cutoff-secret"


def on_redis(*urls: str, presence_ttl: float = 30.0) -> Settings:
    """Settings of a broker on the Redis servers at ``urls`` (sharded when several), with health
    round trips every 0.2 s so that outages show quickly."""
    backplane = BackplaneSettings(
        kind=BackplaneKind.REDIS,
        redis_url=urls[0],
        redis_urls=list(urls) if len(urls) > 1 else [],
        key_prefix=PREFIX,
        health_interval=0.2,
        timeout=1.0,
        presence_ttl=presence_ttl,
    )
    return Settings(namespaces=NAMESPACES, backplane=backplane)


@asynccontextmanager
async def brokers(settings: Settings, count: int) -> AsyncIterator[list[RunningBroker]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_ready(settings)) for _ in range(count)]


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis connection for looking at what the brokers did, as redis-cli would."""
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


class Tally:
    """Items counted as they come, with a way to wait until there are ``n``."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def __len__(self) -> int:
        return len(self.items)

    async def reach(self, n: int) -> None:
        while len(self.items) < n:
            self._changed.clear()
            await self._changed.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:  # noqa: ASYNC109
    """Poll ``check()`` until it holds: for state seen from outside (Redis, HTTP)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - nothing to await: see the docstring
            await asyncio.sleep(0.02)


async def readyz(broker: RunningBroker | int) -> int | None:
    """The status of ``GET /readyz`` of a broker (in this process, or a process's port); None
    while nothing answers."""
    url = (
        broker.http("/readyz")
        if isinstance(broker, RunningBroker)
        else (f"http://127.0.0.1:{broker}/readyz")
    )
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        try:
            return (await http.get(url)).status_code
        except httpx.TransportError:
            return None


async def wait_readyz(broker: RunningBroker | int, status: int) -> None:
    """Wait until ``/readyz`` answers ``status`` (the health round trip runs every 0.2 s)."""

    async def check() -> bool:
        return await readyz(broker) == status

    await eventually(check, timeout=TIMEOUT * 2)


async def numsub(redis: aioredis.Redis, channel: str) -> int:
    """How many connections are subscribed in Redis to the live pub/sub channel of ``channel``."""
    ((_, count),) = await redis.pubsub_numsub(f"{PREFIX}:c:{channel}")
    return int(count)


async def presence_of(client: ProtocolClient, channel: str) -> list[str]:
    await client.send(Presence(id=31, channel=channel))
    return sorted(c.client for c in (await client.expect(PresenceResult)).clients)


def cutoff_url(server: RedisServer) -> str:
    return f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"


async def command(redis: aioredis.Redis, *args: str) -> Any:
    """A Redis command as redis-cli would send it."""
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def allow_cutoff_user(redis: aioredis.Redis) -> None:
    await command(redis, "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")


async def cut_off(redis: aioredis.Redis) -> None:
    """Lock the cut-off user out and drop its connections: that broker loses Redis, the others
    do not."""
    await command(redis, "ACL", "SETUSER", USER, "off")
    await command(redis, "CLIENT", "KILL", "USER", USER)


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
        await on_b.expect(Unsubscribed)
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


# --- outages ------------------------------------------------------------------------------------


async def test_while_redis_is_down_readyz_is_503_publishes_are_unavailable_and_clients_stay(
    redis_server: RedisServer,
) -> None:
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as (pub, sub),
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        before = await subscribe(sub, "h:news")
        await publish(pub, "h:news", "before", 1)
        assert [m.offset for m in await receive(sub, 1)] == [1]
        await redis_server.stop()

        await wait_readyz(running, 503)
        await pub.send(Publish(id=2, channel="h:news", data=raw(pub, "lost")))
        error = await pub.expect(Error)
        assert (error.id, error.code) == (2, "unavailable")
        response = await http.post(
            running.http("/v1/publish"), json={"channel": "h:news", "data": "lost"}
        )
        assert (response.status_code, response.json()["error"]) == (503, "unavailable")
        await pub.send(History(id=3, channel="h:news"))
        error = await pub.expect(Error)
        assert (error.id, error.code) == (3, "unavailable")
        await assert_alive(pub)
        await assert_alive(sub)  # nothing was delivered for the failed publishes

        await redis_server.start()  # same port, and empty: the stream is lost
        await wait_readyz(running, 200)
        after = await publish(pub, "h:news", "after", 4)
        assert after.epoch != before.epoch
        (message,) = await receive(sub, 1)
        assert (message.epoch, sub.data(message.data)) == (after.epoch, "after")
        await sub.send(Unsubscribe(id=5, channel="h:news"))
        await sub.expect(Unsubscribed)
        old = StreamPosition(offset=1, epoch=before.epoch)
        reply = await subscribe(sub, "h:news", request_id=6, since=old)
        assert (reply.recovered, reply.epoch) == (False, after.epoch)


def assert_in_order_once(messages: list[Publication]) -> None:
    """Per epoch, offsets strictly increase: in order, no duplicate."""
    last: dict[str, int] = {}
    for message in messages:
        assert message.offset > last.get(message.epoch, 0), f"out of order: {message}"
        last[message.epoch] = message.offset


async def test_a_steady_stream_through_a_redis_restart_answers_unavailable_then_goes_on(
    redis_server: RedisServer,
) -> None:
    """Publishes during the outage answer ``unavailable`` (none is a false success); the
    subscriber stays connected and gets the publications of the old stream in order, then those
    of the new one (a new epoch: the restarted Redis lost the old stream)."""
    async with (
        serve_ready(on_redis(redis_server.url)) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as (pub, sub),
    ):
        await subscribe(sub, "h:steady")
        acknowledged = Tally()  # (epoch, offset) of every publish answered ``published``
        refused = Tally()  # every publish answered ``unavailable``
        restarted = asyncio.Event()

        async def publisher() -> None:
            n = 0
            since_restart = 0
            while since_restart < 10:
                n += 1
                await pub.send(Publish(id=n, channel="h:steady", data=raw(pub, n)))
                reply = await pub.recv()
                if isinstance(reply, Error):
                    assert reply.code == "unavailable"
                    refused.add(n)
                else:
                    assert isinstance(reply, Published)
                    acknowledged.add((reply.epoch, reply.offset))
                    since_restart += restarted.is_set()
                await asyncio.sleep(0.01)  # a steady pace: time is the behaviour

        async def outage() -> None:
            await acknowledged.reach(10)
            await redis_server.stop()

            await wait_readyz(running, 503)
            await refused.reach(3)
            await redis_server.start()
            restarted.set()

        messages: list[Publication] = []
        gaps: list[Gap] = []
        async with asyncio.timeout(TIMEOUT * 2):
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(publisher())
                tasks.create_task(outage())
            while acknowledged.items[-1] not in {(m.epoch, m.offset) for m in messages}:
                message = await sub.recv()
                if isinstance(message, Gap):
                    gaps.append(message)
                else:
                    assert isinstance(message, Publication)
                    messages.append(message)
        assert len(refused) >= 3
        assert_in_order_once(messages)
        epochs = list(dict.fromkeys(epoch for epoch, _ in acknowledged.items))
        assert len(epochs) == 2, "the restarted Redis starts a new epoch"
        old, new = ([offset for epoch, offset in acknowledged.items if epoch == e] for e in epochs)
        got_old = [m.offset for m in messages if m.epoch == epochs[0]]
        got_new = [m.offset for m in messages if m.epoch == epochs[1]]
        # The old stream, up to the crash: a publication in flight when Redis died may be lost
        # with the stream it was in (the new epoch tells the client); nothing before it is.
        assert gaps == []
        assert got_old[: len(old) - 1] == old[:-1]
        assert got_new[-1] == new[-1]
        await assert_alive(sub)


async def test_after_its_pubsub_link_is_killed_a_broker_resubscribes_and_misses_nothing(
    redis_server: RedisServer,
) -> None:
    """``CLIENT KILL TYPE pubsub`` for the subscribers' broker, three times during a steady
    stream from another broker: Redis keeps the data, so the subscribers get every offset once,
    in order (what went by while the link was down is filled from the stream)."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON, Encoding.MSGPACK) as pubs,
            clients(subscribing.url(), Encoding.JSON, Encoding.MSGPACK) as subs,
        ):
            for sub in subs:
                await subscribe(sub, "h:stream")
            published = Tally()
            kills_done = asyncio.Event()

            async def publisher(pub: ProtocolClient) -> None:
                n = 0
                while not kills_done.is_set() or n < 30:
                    n += 1
                    published.add((await publish(pub, "h:stream", n, n)).offset)

            async def killer() -> None:
                for _ in range(3):
                    await published.reach(len(published) + 20)
                    killed = await command(redis, "CLIENT", "KILL", "TYPE", "pubsub", "USER", USER)
                    assert killed == 1

                    async def resubscribed() -> bool:
                        return await numsub(redis, "h:stream") == 1

                    await eventually(resubscribed)
                kills_done.set()

            async with asyncio.timeout(TIMEOUT * 2), asyncio.TaskGroup() as tasks:
                for pub in pubs:
                    tasks.create_task(publisher(pub))
                tasks.create_task(killer())
            total = max(published.items)
            assert sorted(published.items) == list(range(1, total + 1))
            for sub in subs:
                got = await receive(sub, total)
                assert [m.offset for m in got] == list(range(1, total + 1))
                await assert_alive(sub)


async def cut_off_while_publishing(
    redis_server: RedisServer, channel: str, missed: int
) -> tuple[list[ServerMessage], int, int]:
    """The subscriber's broker loses Redis (its user is locked out) while another broker
    publishes ``missed`` publications; then it may connect again. What the subscriber received
    up to the last publication, the offset before the outage and the last offset."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON) as (pub,),
            clients(subscribing.url(), Encoding.MSGPACK, Encoding.JSON) as (sub, local),
        ):
            await subscribe(sub, channel)
            for i in range(1, 4):
                await publish(pub, channel, i, i)
            assert [m.offset for m in await receive(sub, 3)] == [1, 2, 3]
            await cut_off(redis)

            await wait_readyz(subscribing, 503)
            assert await readyz(publishing) == 200
            await local.send(Publish(id=1, channel=channel, data=raw(local, "no")))
            error = await local.expect(Error)
            assert (error.id, error.code) == (1, "unavailable")
            for i in range(4, 4 + missed):
                await publish(pub, channel, i, i)
            await allow_cutoff_user(redis)

            await wait_readyz(subscribing, 200)
            last = await publish(pub, channel, "live", 100)
            got: list[ServerMessage] = []
            async with asyncio.timeout(TIMEOUT):
                while not got or not (
                    isinstance(got[-1], Publication) and got[-1].offset >= last.offset
                ):
                    got.append(await sub.recv())
            await assert_alive(sub)
            return got, 3, last.offset


async def test_what_a_broker_missed_while_cut_off_from_redis_is_filled_from_the_stream(
    redis_server: RedisServer,
) -> None:
    got, before, last = await cut_off_while_publishing(redis_server, "h:cut", missed=20)
    assert all(isinstance(m, Publication) for m in got), got
    assert [m.offset for m in got] == list(range(before + 1, last + 1))  # type: ignore[union-attr]


async def test_what_redis_trimmed_before_the_fill_is_reported_as_a_gap(
    redis_server: RedisServer,
) -> None:
    # history_size = 3: of the 20 missed, Redis keeps the last 3 (and the live one pushes one
    # of those out only after the fill has read them, or arrives in order after it).
    got, before, last = await cut_off_while_publishing(redis_server, "small:cut", missed=20)
    assert isinstance(got[0], Gap), got
    assert got[0].channel == "small:cut"
    assert got[0].from_offset == before + 1
    rest = got[1:]
    assert all(isinstance(m, Publication) for m in rest), rest
    offsets = [m.offset for m in rest]  # type: ignore[union-attr]
    assert offsets == list(range(got[0].to_offset + 1, last + 1))
    assert last - got[0].to_offset >= 2


async def test_after_redis_lost_the_stream_a_broker_delivers_the_new_epoch_from_offset_1(
    redis_server: RedisServer,
) -> None:
    """Redis restarts empty; another broker publishes into the new stream before this one is
    back. Those publications are retained in the new stream, so its subscribers get them."""
    async with redis_client(redis_server.url) as redis:
        await allow_cutoff_user(redis)
        async with (
            serve_ready(on_redis(redis_server.url)) as publishing,
            serve_ready(on_redis(cutoff_url(redis_server))) as subscribing,
            clients(publishing.url(), Encoding.JSON) as (pub,),
            clients(subscribing.url(), Encoding.JSON) as (sub,),
        ):
            before = await subscribe(sub, "h:reborn")
            await redis_server.stop()
            await redis_server.start()  # without the user: the subscribers' broker stays out

            await wait_readyz(publishing, 200)
            first = [await publish(pub, "h:reborn", i, i) for i in (1, 2)]
            assert first[0].epoch != before.epoch
            async with redis_client(redis_server.url) as fresh:
                await allow_cutoff_user(fresh)

            await wait_readyz(subscribing, 200)
            await publish(pub, "h:reborn", 3, 3)
            got: list[tuple[str, int]] = []
            while (first[0].epoch, 3) not in got:
                message = await sub.expect(Publication)
                got.append((message.epoch, message.offset))
            assert got == [(first[0].epoch, offset) for offset in (1, 2, 3)]


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
