"""One behavioural suite, run over both backplanes: whatever the backplane, a client
over a real socket sees the same publications, offsets, history, recovery and presence
(docs/protocol.md §1). The Redis runs use a private redis-server per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import (
    Encoding,
    Error,
    History,
    HistoryResult,
    Join,
    Leave,
    Ping,
    Pong,
    Presence,
    PresenceResult,
    Publication,
    Publish,
    Published,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker, wait_until
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[BackplaneKind.MEMORY, BackplaneKind.REDIS], ids=["memory", "redis"])
async def backplane(request: pytest.FixtureRequest) -> AsyncIterator[BackplaneSettings]:
    """The backplane of the test's broker; for Redis, on a redis-server of the test's own."""
    if request.param is BackplaneKind.MEMORY:
        yield BackplaneSettings()
        return
    server = RedisServer()
    await server.start()
    try:
        yield BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=server.url)
    finally:
        await server.close()


# --- helpers (test_redis.py and test_processes.py use them too) ---------------------------------


@asynccontextmanager
async def serve_ready(settings: Settings) -> AsyncIterator[RunningBroker]:
    """A broker that is ready (its backplane connected) before any client connects."""
    async with serve_broker(settings) as running:
        await wait_until(lambda: running.broker.ready)
        yield running


@asynccontextmanager
async def serve(
    backplane: BackplaneSettings, **namespaces: NamespaceSettings
) -> AsyncIterator[RunningBroker]:
    async with serve_ready(Settings(namespaces=namespaces, backplane=backplane)) as running:
        yield running


@asynccontextmanager
async def clients(url: str, *encodings: Encoding) -> AsyncIterator[list[ProtocolClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(url, e)) for e in encodings]


def raw(client: ProtocolClient, value: Any) -> msgspec.Raw:
    """``value`` as a payload in ``client``'s encoding."""
    encode = msgspec.json.encode if client.codec.text else msgspec.msgpack.encode
    return msgspec.Raw(encode(value))


def client_id(client: ProtocolClient) -> str:
    assert client.welcome is not None
    return client.welcome.client


async def subscribe(
    client: ProtocolClient,
    channel: str,
    request_id: int = 1,
    since: StreamPosition | None = None,
) -> Subscribed:
    await client.send(Subscribe(id=request_id, channel=channel, since=since))
    reply = await client.expect(Subscribed)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def publish(client: ProtocolClient, channel: str, value: Any, request_id: int) -> Published:
    await client.send(Publish(id=request_id, channel=channel, data=raw(client, value)))
    reply = await client.expect(Published)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def receive(client: ProtocolClient, count: int) -> list[Publication]:
    return [await client.expect(Publication) for _ in range(count)]


async def assert_alive(client: ProtocolClient, request_id: int = 4242) -> None:
    """The connection still answers, and nothing else was queued for it before the pong."""
    await client.send(Ping(id=request_id))
    assert await client.recv() == Pong(id=request_id)


async def history(
    client: ProtocolClient,
    channel: str,
    *,
    limit: int | None = None,
    since: StreamPosition | None = None,
) -> HistoryResult:
    await client.send(History(id=77, channel=channel, limit=limit, since=since))
    return await client.expect(HistoryResult)


# --- publish and subscribe ----------------------------------------------------------------------


async def test_every_subscriber_gets_offsets_1_to_n_in_order_whatever_the_encodings(
    backplane: BackplaneSettings,
) -> None:
    encodings = (Encoding.JSON, Encoding.MSGPACK, Encoding.JSON, Encoding.MSGPACK, Encoding.JSON)
    async with serve(backplane) as running, clients(running.url(), *encodings) as cs:
        pub_json, pub_msgpack, *subscribers = cs
        for sub in subscribers:
            reply = await subscribe(sub, "ticks")
            assert reply.offset == 0
        replies = []
        for i in range(1, 21):
            publisher = pub_json if i % 2 else pub_msgpack
            replies.append(await publish(publisher, "ticks", {"n": i, "text": "ü|1|x|"}, i))
        assert [r.offset for r in replies] == list(range(1, 21))
        assert len({r.epoch for r in replies}) == 1
        for sub in subscribers:
            got = await receive(sub, 20)
            assert [(m.offset, sub.data(m.data)) for m in got] == [
                (i, {"n": i, "text": "ü|1|x|"}) for i in range(1, 21)
            ]
            assert {m.epoch for m in got} == {replies[0].epoch}
            assert [m.from_ for m in got] == [
                client_id(pub_json if i % 2 else pub_msgpack) for i in range(1, 21)
            ]


async def test_publish_with_an_id_answers_its_offset_and_without_one_answers_nothing(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane) as running,
        clients(running.url(), Encoding.MSGPACK, Encoding.JSON) as (pub, sub),
    ):
        subscribed = await subscribe(sub, "news")
        first = await publish(pub, "news", "one", 5)
        assert (first.offset, first.epoch) == (1, subscribed.epoch)
        await pub.send(Publish(channel="news", data=raw(pub, "two")))
        third = await publish(pub, "news", "three", 6)
        assert (third.offset, third.epoch) == (3, subscribed.epoch)
        got = await receive(sub, 3)
        assert [(m.offset, sub.data(m.data)) for m in got] == [(1, "one"), (2, "two"), (3, "three")]
        await assert_alive(pub)  # and no reply to the publish without id


async def test_unsubscribe_stops_delivery_to_that_client_only(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as (leaver, stayer),
    ):
        await subscribe(leaver, "news")
        await subscribe(stayer, "news")
        await leaver.send(Unsubscribe(id=2, channel="news"))
        assert await leaver.expect(Unsubscribed) == Unsubscribed(id=2, channel="news")
        await publish(stayer, "news", "after", 3)
        assert [m.offset for m in await receive(stayer, 1)] == [1]
        await assert_alive(leaver)


async def test_http_publish_reaches_subscribers_of_both_encodings_from_null(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK) as cs,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        for sub in cs:
            await subscribe(sub, "prices")
        response = await http.post(
            running.http("/v1/publish"), json={"channel": "prices", "data": {"p": 1.5}}
        )
        assert response.status_code == 200
        assert response.json()["offset"] == 1
        for sub in cs:
            (message,) = await receive(sub, 1)
            assert (message.offset, message.epoch) == (1, response.json()["epoch"])
            assert message.from_ is None
            assert sub.data(message.data) == {"p": 1.5}


# --- history ------------------------------------------------------------------------------------


async def test_history_keeps_only_the_latest_history_size_publications(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=5)) as running,
        clients(running.url(), Encoding.MSGPACK) as (client,),
    ):
        for i in range(1, 9):
            await publish(client, "h:log", f"entry {i}", i)
        result = await history(client, "h:log")
        assert result.offset == 8
        assert [(p.offset, client.data(p.data)) for p in result.publications] == [
            (i, f"entry {i}") for i in range(4, 9)
        ]
        assert {p.epoch for p in result.publications} == {result.epoch}
        assert {p.from_ for p in result.publications} == {client_id(client)}


@pytest.mark.parametrize(
    ("limit", "since", "offsets"),
    [(2, None, [4, 5]), (None, 2, [3, 4, 5]), (2, 2, [3, 4]), (None, 5, []), (0, None, [])],
    ids=["latest-2", "since-2", "since-2-limit-2", "since-latest", "limit-0"],
)
async def test_history_honours_limit_and_since(
    backplane: BackplaneSettings, limit: int | None, since: int | None, offsets: list[int]
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10)) as running,
        clients(running.url(), Encoding.JSON) as (client,),
    ):
        replies = [await publish(client, "h:log", i, i) for i in range(1, 6)]
        position = None if since is None else StreamPosition(offset=since, epoch=replies[0].epoch)
        result = await history(client, "h:log", limit=limit, since=position)
        assert (result.offset, result.epoch) == (5, replies[0].epoch)
        assert [(p.offset, client.data(p.data)) for p in result.publications] == [
            (o, o) for o in offsets
        ]


async def test_history_since_a_position_of_another_epoch_answers_the_latest(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10)) as running,
        clients(running.url(), Encoding.JSON) as (client,),
    ):
        for i in range(1, 5):
            await publish(client, "h:log", i, i)
        stale = StreamPosition(offset=2, epoch="gone")
        result = await history(client, "h:log", limit=3, since=stale)
        assert [p.offset for p in result.publications] == [2, 3, 4]


async def test_history_forgets_publications_older_than_the_ttl(
    backplane: BackplaneSettings,
) -> None:
    ttl = 1.0
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10, history_ttl=ttl)) as running,
        clients(running.url(), Encoding.JSON) as (client,),
    ):
        # Time is the behaviour: 1 and 2 expire at ttl, 3 (published between) at 1.55 * ttl.
        await publish(client, "h:log", "old", 1)
        await publish(client, "h:log", "old too", 2)
        await asyncio.sleep(0.55 * ttl)
        await publish(client, "h:log", "kept", 3)
        await asyncio.sleep(0.55 * ttl)
        await publish(client, "h:log", "fresh", 4)
        await publish(client, "h:log", "fresh too", 5)
        result = await history(client, "h:log")
        assert [(p.offset, client.data(p.data)) for p in result.publications] == [
            (3, "kept"),
            (4, "fresh"),
            (5, "fresh too"),
        ]
        # A limit counts retained publications, not the expired ones before them.
        oldest = StreamPosition(offset=0, epoch=result.epoch)
        result = await history(client, "h:log", limit=2, since=oldest)
        assert [p.offset for p in result.publications] == [3, 4]
        reply = await subscribe(client, "h:log", since=StreamPosition(offset=1, epoch=result.epoch))
        assert (reply.recovered, reply.offset, reply.publications) == (False, 5, [])


# --- recovery -----------------------------------------------------------------------------------


async def test_recovery_delivers_exactly_the_missed_publications_then_live_ones(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=100)) as running,
        clients(running.url(), Encoding.JSON) as (pub,),
    ):
        async with open_client(running.url(), Encoding.MSGPACK) as sub:
            await subscribe(sub, "h:feed")
            for i in range(1, 4):
                await publish(pub, "h:feed", i, i)
            last = (await receive(sub, 3))[-1]
        for i in range(4, 8):  # missed while away
            await publish(pub, "h:feed", i, i)
        async with open_client(running.url(), Encoding.MSGPACK) as back:
            since = StreamPosition(offset=last.offset, epoch=last.epoch)
            reply = await subscribe(back, "h:feed", since=since)
            assert (reply.recovered, reply.epoch, reply.offset) == (True, last.epoch, 7)
            assert [(p.offset, back.data(p.data)) for p in reply.publications] == [
                (i, i) for i in range(4, 8)
            ]
            await publish(pub, "h:feed", 8, 8)
            (live,) = await receive(back, 1)
            assert (live.offset, back.data(live.data)) == (8, 8)
            await assert_alive(back)


@pytest.mark.parametrize(
    ("since", "epoch_kept"),
    [(1, False), (2, True)],
    ids=["unknown-epoch", "older-than-retained"],
)
async def test_recovery_fails_from_an_unknown_epoch_or_beyond_what_is_retained(
    backplane: BackplaneSettings, since: int, epoch_kept: bool
) -> None:
    async with (
        serve(backplane, h=NamespaceSettings(history_size=3)) as running,
        clients(running.url(), Encoding.JSON) as (client,),
    ):
        replies = [await publish(client, "h:feed", i, i) for i in range(1, 7)]
        epoch = replies[0].epoch if epoch_kept else "an-epoch-that-is-gone"
        reply = await subscribe(client, "h:feed", since=StreamPosition(offset=since, epoch=epoch))
        assert (reply.recovered, reply.epoch, reply.offset) == (False, replies[0].epoch, 6)
        assert reply.publications == []
        await publish(client, "h:feed", 7, 7)
        assert [m.offset for m in await receive(client, 1)] == [7]


@pytest.mark.parametrize("watched", [False, True], ids=["first-subscriber", "channel-watched"])
async def test_recovery_while_publishing_goes_on_delivers_every_offset_once_in_order(
    backplane: BackplaneSettings, watched: bool
) -> None:
    """The race of docs/protocol.md §1: what is published while the missed ones are read must follow
    them, with no gap and no duplicate, whether or not the channel was watched here already."""
    async with (
        serve(backplane, h=NamespaceSettings(history_size=10_000)) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK, Encoding.JSON) as cs,
    ):
        pub, sub, watcher = cs
        if watched:
            await subscribe(watcher, "h:race")
        first = await publish(pub, "h:race", 1, 1)
        published = [first.offset]
        enough = asyncio.Event()
        more = asyncio.Event()

        async def publisher() -> None:
            n = 1
            while len(published) < 200:
                n += 1
                published.append((await publish(pub, "h:race", n, n)).offset)
                if len(published) == 30:
                    enough.set()
            more.set()

        async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher())
            await enough.wait()
            since = StreamPosition(offset=first.offset, epoch=first.epoch)
            reply = await subscribe(sub, "h:race", since=since)
            assert reply.recovered is True
            offsets = [p.offset for p in reply.publications]
            assert offsets, "the subscribe came after some publications"
            await more.wait()
            while offsets[-1] < published[-1]:
                offsets.append((await sub.expect(Publication)).offset)
        assert published == list(range(1, 201))
        assert offsets == list(range(2, 201))
        if watched:
            assert [m.offset for m in await receive(watcher, 200)] == published


# --- presence -----------------------------------------------------------------------------------


PRESENCE = NamespaceSettings(presence=True, join_leave=True)


async def test_presence_lists_every_subscriber_and_forgets_one_that_left(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, p=PRESENCE) as running,
        clients(running.url(), Encoding.JSON, Encoding.MSGPACK, Encoding.JSON) as (a, b, asker),
    ):
        await subscribe(a, "p:lobby")
        await subscribe(b, "p:lobby")
        await a.expect(Join)
        await asker.send(Presence(id=3, channel="p:lobby"))
        result = await asker.expect(PresenceResult)
        assert result.id == 3
        assert sorted(c.client for c in result.clients) == sorted([client_id(a), client_id(b)])
        assert {c.user for c in result.clients} == {None}
        await b.send(Unsubscribe(id=2, channel="p:lobby"))
        await b.expect(Unsubscribed)
        await a.expect(Leave)
        await asker.send(Presence(id=4, channel="p:lobby"))
        result = await asker.expect(PresenceResult)
        assert [c.client for c in result.clients] == [client_id(a)]


async def test_join_and_leave_reach_the_others_but_not_the_client_itself(
    backplane: BackplaneSettings,
) -> None:
    async with (
        serve(backplane, p=PRESENCE) as running,
        clients(running.url(), Encoding.MSGPACK, Encoding.JSON) as (a, b),
    ):
        await subscribe(a, "p:room")
        await subscribe(b, "p:room")
        assert await a.recv() == Join(channel="p:room", client=client_id(b), user=None)
        await assert_alive(b)
        await b.ws.close()  # gone without unsubscribing
        assert await a.recv() == Leave(channel="p:room", client=client_id(b), user=None)
        await assert_alive(a)


async def test_presence_is_refused_where_the_namespace_does_not_enable_it(
    backplane: BackplaneSettings,
) -> None:
    async with serve(backplane) as running, clients(running.url(), Encoding.JSON) as (client,):
        await client.send(Presence(id=5, channel="plain"))
        error = await client.expect(Error)
        assert (error.id, error.code) == (5, "bad_request")
