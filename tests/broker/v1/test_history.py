"""``/v1/ws`` history, recovery, presence, join and leave, over real sockets."""

from __future__ import annotations

import pytest

from broker.settings import (
    NamespaceSettings,
    Settings,
)
from protocol import (
    Encoding,
    Error,
    History,
    HistoryResult,
    Join,
    Leave,
    Presence,
    PresenceResult,
    Publication,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.broker.v1.helpers import (
    ENCODINGS,
    assert_alive,
    clients,
    publish,
    subscribe,
)
from tests.conftest import RunningBroker, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio


# --- history, presence, join and leave ----------------------------------------------------------


@ENCODINGS
@pytest.mark.parametrize("kind", ["history", "presence"])
async def test_history_and_presence_answer_an_error_where_the_namespace_does_not_enable_them(
    running: RunningBroker, encoding: Encoding, kind: str
) -> None:
    async with open_client(running.url(), encoding) as client:
        await subscribe(client, "chat:room")
        request: History | Presence = (
            History(id=9, channel="chat:room")
            if kind == "history"
            else Presence(id=9, channel="chat:room")
        )
        await client.send(request)
        error = await client.expect(Error)
        assert error.id == 9
        assert kind in error.message and "not enabled" in error.message
        await assert_alive(client)


HISTORY = Settings(namespaces={"h": NamespaceSettings(history_size=10)})


@ENCODINGS
async def test_history_returns_retained_publications_in_order(encoding: Encoding) -> None:
    async with serve_broker(HISTORY) as running, clients(running, encoding, encoding) as cs:
        pub, reader = cs
        for i in range(1, 13):
            await publish(pub, "h:log", f"entry {i}", i)
        await reader.send(History(id=1, channel="h:log"))
        result = await reader.expect(HistoryResult)
        assert (result.id, result.channel, result.offset) == (1, "h:log", 12)
        # history_size = 10: the oldest two are gone.
        assert [(p.offset, reader.data(p.data)) for p in result.publications] == [
            (i, f"entry {i}") for i in range(3, 13)
        ]
        assert {p.epoch for p in result.publications} == {result.epoch}
        assert pub.welcome is not None
        assert {p.from_ for p in result.publications} == {pub.welcome.client}


@ENCODINGS
@pytest.mark.parametrize(
    ("limit", "since", "offsets"),
    [
        (3, None, [3, 4, 5]),
        (0, None, []),
        (5, None, [1, 2, 3, 4, 5]),
        (7, None, [1, 2, 3, 4, 5]),
        (None, 2, [3, 4, 5]),
        (2, 2, [3, 4]),
        (None, 5, []),
    ],
    ids=[
        "latest-3",
        "limit-0",
        "limit-equal-to-retained",
        "limit-above-retained",
        "since-2",
        "since-2-limit-2",
        "since-latest",
    ],
)
async def test_history_honours_limit_and_since(
    encoding: Encoding, limit: int | None, since: int | None, offsets: list[int]
) -> None:
    async with serve_broker(HISTORY) as running, open_client(running.url(), encoding) as client:
        replies = [await publish(client, "h:log", i, i) for i in range(1, 6)]
        epoch = replies[0].epoch
        position = None if since is None else StreamPosition(offset=since, epoch=epoch)
        await client.send(History(id=7, channel="h:log", limit=limit, since=position))
        result = await client.expect(HistoryResult)
        assert [p.offset for p in result.publications] == offsets
        assert [client.data(p.data) for p in result.publications] == offsets


@ENCODINGS
async def test_resubscribing_since_the_last_position_recovers_exactly_the_missed_publications(
    encoding: Encoding,
) -> None:
    async with serve_broker(HISTORY) as running, open_client(running.url(), encoding) as pub:
        async with open_client(running.url(), encoding) as sub:
            await subscribe(sub, "h:feed")
            for i in range(1, 4):
                await publish(pub, "h:feed", i, i)
            seen = [await sub.expect(Publication) for _ in range(3)]
        last = StreamPosition(offset=seen[-1].offset, epoch=seen[-1].epoch)
        for i in range(4, 7):  # missed while away
            await publish(pub, "h:feed", i, i)
        async with open_client(running.url(), encoding) as back:
            await back.send(Subscribe(id=1, channel="h:feed", since=last))
            reply = await back.expect(Subscribed)
            assert reply.recovered is True
            assert (reply.epoch, reply.offset) == (last.epoch, 6)
            assert [(p.offset, back.data(p.data)) for p in reply.publications] == [
                (4, 4),
                (5, 5),
                (6, 6),
            ]
            await publish(pub, "h:feed", 7, 7)
            live = await back.expect(Publication)
            assert (live.offset, back.data(live.data)) == (7, 7)


@pytest.mark.parametrize(
    ("since", "recovered", "offsets"),
    [(12, True, []), (9, True, [10, 11, 12]), (2, True, list(range(3, 13))), (1, False, [])],
    ids=["up-to-date", "three-behind", "oldest-retained", "beyond-retention"],
)
async def test_recovery_succeeds_only_while_every_missed_publication_is_retained(
    since: int, recovered: bool, offsets: list[int]
) -> None:
    async with serve_broker(HISTORY) as running, open_client(running.url()) as client:
        replies = [await publish(client, "h:log", i, i) for i in range(1, 13)]
        epoch = replies[0].epoch
        await client.send(
            Subscribe(id=20, channel="h:log", since=StreamPosition(offset=since, epoch=epoch))
        )
        reply = await client.expect(Subscribed)
        assert (reply.recovered, reply.offset) == (recovered, 12)
        assert [p.offset for p in reply.publications] == offsets


@ENCODINGS
async def test_resubscribing_from_an_unknown_epoch_is_not_recovered(encoding: Encoding) -> None:
    async with serve_broker(HISTORY) as running, open_client(running.url(), encoding) as client:
        await publish(client, "h:feed", "kept", 1)
        stale = StreamPosition(offset=1, epoch="an-epoch-that-is-gone")
        await client.send(Subscribe(id=2, channel="h:feed", since=stale))
        reply = await client.expect(Subscribed)
        assert reply.recovered is False
        assert reply.epoch != stale.epoch
        assert reply.offset == 1


PRESENCE = Settings(namespaces={"p": NamespaceSettings(presence=True, join_leave=True)})


@ENCODINGS
async def test_presence_lists_the_subscribed_client_ids(encoding: Encoding) -> None:
    async with serve_broker(PRESENCE) as running, clients(running, encoding, encoding) as cs:
        a, b = cs
        assert a.welcome is not None and b.welcome is not None
        await subscribe(a, "p:lobby")
        await subscribe(b, "p:lobby")
        assert await a.expect(Join)  # b's arrival
        async with open_client(running.url(), encoding) as outsider:
            await outsider.send(Presence(id=3, channel="p:lobby"))
            result = await outsider.expect(PresenceResult)
            assert result.id == 3
            assert sorted((c.client, c.user) for c in result.clients) == sorted(
                [(a.welcome.client, None), (b.welcome.client, None)]
            )
            await b.ws.close()
            leave = await a.expect(Leave)
            assert leave.client == b.welcome.client
            await outsider.send(Presence(id=4, channel="p:lobby"))
            result = await outsider.expect(PresenceResult)
            assert [c.client for c in result.clients] == [a.welcome.client]


@ENCODINGS
async def test_join_and_leave_tell_the_other_subscribers_who_came_and_went(
    encoding: Encoding,
) -> None:
    async with serve_broker(PRESENCE) as running, clients(running, encoding, encoding) as cs:
        a, b = cs
        assert b.welcome is not None
        await subscribe(a, "p:room")
        await subscribe(b, "p:room")
        assert await a.recv() == Join(channel="p:room", client=b.welcome.client, user=None)
        await assert_alive(b)  # no join for oneself
        await b.send(Unsubscribe(id=2, channel="p:room"))
        await b.expect(Unsubscribed)
        assert await a.recv() == Leave(channel="p:room", client=b.welcome.client, user=None)
        async with open_client(running.url(), encoding) as c:
            assert c.welcome is not None
            await subscribe(c, "p:room")
            assert await a.recv() == Join(channel="p:room", client=c.welcome.client, user=None)
        # c closed its connection without unsubscribing.
        assert await a.recv() == Leave(channel="p:room", client=c.welcome.client, user=None)


async def test_no_join_or_leave_where_the_namespace_does_not_enable_them(
    running: RunningBroker,
) -> None:
    async with clients(running, Encoding.JSON, Encoding.JSON) as (a, b):
        await subscribe(a, "room")
        await subscribe(b, "room")
        await b.send(Unsubscribe(id=2, channel="room"))
        await b.expect(Unsubscribed)
        await assert_alive(a)
