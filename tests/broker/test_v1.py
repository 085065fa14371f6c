"""``/v1/ws`` over real sockets (docs/protocol.md §1), in both encodings where encoding matters."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from broker.settings import (
    LimitSettings,
    LogSettings,
    NamespaceSettings,
    Settings,
    WebSocketSettings,
)
from protocol import (
    Disconnect,
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
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

ENCODINGS = pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])

#: What must never leak into an ``error`` message: a traceback or a source location.
LEAK = re.compile(r'Traceback|File "|\.py\b|site-packages')


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that ``shared`` can live as long as the module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[RunningBroker]:
    """One broker on its defaults for the many bad-input cases, which leave no state behind (each
    server start and stop costs ~0.2 s)."""
    async with serve_broker() as running:
        yield running


# --- helpers ------------------------------------------------------------------------------------


def raw(client: ProtocolClient, value: Any) -> msgspec.Raw:
    """``value`` as a payload in ``client``'s encoding."""
    encode = msgspec.json.encode if client.codec.text else msgspec.msgpack.encode
    return msgspec.Raw(encode(value))


async def subscribe(client: ProtocolClient, channel: str, request_id: int = 1) -> Subscribed:
    await client.send(Subscribe(id=request_id, channel=channel))
    reply = await client.expect(Subscribed)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def publish(client: ProtocolClient, channel: str, value: Any, request_id: int) -> Published:
    await client.send(Publish(id=request_id, channel=channel, data=raw(client, value)))
    reply = await client.expect(Published)
    assert (reply.id, reply.channel) == (request_id, channel)
    return reply


async def assert_alive(client: ProtocolClient, request_id: int = 4242) -> None:
    """The connection still answers, and nothing else was queued for it before the pong."""
    await client.send(Ping(id=request_id))
    assert await client.recv() == Pong(id=request_id)


async def messages_until_closed(client: ProtocolClient) -> tuple[list[ServerMessage], int]:
    """Every message the client gets until the server closes, and the close code."""
    received: list[ServerMessage] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                received.append(await client.recv())
    assert closed.value.rcvd is not None, "closed without a close frame"
    return received, closed.value.rcvd.code


@asynccontextmanager
async def clients(
    running: RunningBroker, *encodings: Encoding
) -> AsyncIterator[list[ProtocolClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(running.url(), e)) for e in encodings]


# --- welcome and subprotocols -------------------------------------------------------------------


@ENCODINGS
async def test_welcome_is_the_first_message_and_carries_the_configured_limits(
    encoding: Encoding,
) -> None:
    settings = Settings(websocket=WebSocketSettings(heartbeat=12.5, max_message_bytes=4096))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        welcome = client.welcome
        assert welcome is not None
        assert client.frames == 1
        assert welcome.version == "1"
        assert welcome.heartbeat == 12.5
        assert welcome.max_message_bytes == 4096
        assert welcome.client in running.broker.connections


async def test_each_connection_gets_its_own_client_id(shared: RunningBroker) -> None:
    async with clients(shared, Encoding.JSON, Encoding.JSON) as (a, b):
        assert a.welcome is not None and b.welcome is not None
        assert a.welcome.client != b.welcome.client


async def test_a_client_offering_no_subprotocol_speaks_json_in_text_frames(
    shared: RunningBroker,
) -> None:
    async with open_client(shared.url(), Encoding.JSON, subprotocol=False) as client:
        assert client.ws.subprotocol is None
        # ProtocolClient.recv rejects a binary frame on a JSON client.
        await assert_alive(client)


@ENCODINGS
async def test_the_server_echoes_the_subprotocol_and_uses_its_frame_kind(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        assert client.ws.subprotocol == encoding.subprotocol
        await assert_alive(client)


async def test_an_unknown_subprotocol_next_to_a_known_one_is_ignored(
    shared: RunningBroker,
) -> None:
    offered = [Subprotocol("broker.v0.xml"), Subprotocol(Encoding.MSGPACK.subprotocol)]
    async with connect(shared.url(), subprotocols=offered, open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol == Encoding.MSGPACK.subprotocol
        first = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(first, bytes)
        assert isinstance(msgspec.msgpack.decode(first, type=Welcome), Welcome)


async def test_a_client_offering_only_unknown_subprotocols_is_refused(
    running: RunningBroker,
) -> None:
    offered = [Subprotocol("chat"), Subprotocol("broker.v2.json")]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(running.url(), subprotocols=offered, open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code >= 400
    assert running.broker.connections == {}


# --- subscribe, unsubscribe, publish, ping ------------------------------------------------------


@ENCODINGS
async def test_subscribed_reports_the_channels_epoch_and_latest_offset(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, encoding, encoding) as (first, pub, late):
        fresh = await subscribe(first, "news")
        assert fresh.offset == 0
        assert fresh.epoch
        assert fresh.recovered is False and fresh.publications == []
        await publish(pub, "news", "one", 1)
        await publish(pub, "news", "two", 2)
        joined = await subscribe(late, "news")
        assert (joined.epoch, joined.offset) == (fresh.epoch, 2)


@ENCODINGS
async def test_subscribing_twice_answers_already_subscribed_and_keeps_one_subscription(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, encoding) as (sub, pub):
        await subscribe(sub, "news", 1)
        await sub.send(Subscribe(id=2, channel="news"))
        error = await sub.expect(Error)
        assert (error.id, error.code) == (2, "already_subscribed")
        await publish(pub, "news", "once", 1)
        assert (await sub.expect(Publication)).offset == 1
        await assert_alive(sub)  # delivered once, not twice


@ENCODINGS
async def test_unsubscribe_stops_delivery_and_a_second_one_answers_not_subscribed(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, encoding) as (sub, pub):
        await subscribe(sub, "news", 1)
        await sub.send(Unsubscribe(id=2, channel="news"))
        assert await sub.recv() == Unsubscribed(id=2, channel="news")
        await publish(pub, "news", "unseen", 1)
        await assert_alive(sub)
        await sub.send(Unsubscribe(id=3, channel="news"))
        error = await sub.expect(Error)
        assert (error.id, error.code) == (3, "not_subscribed")


@ENCODINGS
async def test_unsubscribe_from_a_channel_never_subscribed_answers_not_subscribed(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        await client.send(Unsubscribe(id=7, channel="elsewhere"))
        error = await client.expect(Error)
        assert (error.id, error.code) == (7, "not_subscribed")


@ENCODINGS
async def test_publish_with_id_is_answered_with_consecutive_offsets_per_channel(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, encoding) as (sub, pub):
        await subscribe(sub, "a")
        await subscribe(sub, "b", 2)
        replies = [await publish(pub, "a", i, i) for i in range(1, 4)]
        other = await publish(pub, "b", "x", 10)
        assert [r.offset for r in replies] == [1, 2, 3]
        assert len({r.epoch for r in replies}) == 1
        assert other.offset == 1  # offsets count per channel


@ENCODINGS
async def test_publish_without_id_gets_no_reply_but_is_delivered_from_the_publisher(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, encoding) as (sub, pub):
        await subscribe(sub, "news")
        await pub.send(Publish(channel="news", data=raw(pub, {"headline": "quiet"})))
        await assert_alive(pub)  # the next message is the pong: no `published`
        message = await sub.expect(Publication)
        assert pub.welcome is not None
        assert message.from_ == pub.welcome.client
        assert (message.channel, message.offset) == ("news", 1)
        assert sub.data(message.data) == {"headline": "quiet"}


@ENCODINGS
async def test_ping_is_answered_with_pong_carrying_the_same_id(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        for request_id in (0, 1, 2**53):
            await client.send(Ping(id=request_id))
            assert await client.recv() == Pong(id=request_id)


@ENCODINGS
async def test_every_subscriber_receives_every_publication_in_offset_order(
    running: RunningBroker, encoding: Encoding
) -> None:
    async with clients(running, encoding, Encoding.JSON, Encoding.MSGPACK) as (pub, *subs):
        epochs = {(await subscribe(sub, "feed")).epoch for sub in subs}
        for i in range(50):
            await pub.send(Publish(channel="feed", data=raw(pub, {"i": i})))

        async def read_all(sub: ProtocolClient) -> list[tuple[int, Any, str]]:
            received = []
            for _ in range(50):
                m = await sub.expect(Publication)
                received.append((m.offset, sub.data(m.data), m.epoch))
            return received

        for sub in subs:
            got = await read_all(sub)
            assert [(offset, data) for offset, data, _ in got] == [
                (i + 1, {"i": i}) for i in range(50)
            ]
            assert {epoch for _, _, epoch in got} == epochs


PAYLOAD = {
    "text": "héllo, 世界 ✓",
    "numbers": [0, -1, 2**40, 2.5, None, True, False],
    "nested": {"empty": {}, "list": [[], [1, [2]]]},
}


@pytest.mark.parametrize(
    ("source", "target"),
    [(Encoding.JSON, Encoding.MSGPACK), (Encoding.MSGPACK, Encoding.JSON)],
    ids=["json-to-msgpack", "msgpack-to-json"],
)
async def test_a_publication_reaches_a_subscriber_of_the_other_encoding_unchanged(
    running: RunningBroker, source: Encoding, target: Encoding
) -> None:
    async with clients(running, source, target) as (pub, sub):
        await subscribe(sub, "mixed")
        await publish(pub, "mixed", PAYLOAD, 1)
        message = await sub.expect(Publication)
        assert sub.data(message.data) == PAYLOAD
        assert pub.welcome is not None
        assert message.from_ == pub.welcome.client


@pytest.mark.parametrize(
    "data",
    [
        {1: "int key"},
        {b"\x00\xff": "bytes key"},
        {None: "nil key"},
        {(1, 2): "array key"},
        {"outer": [{2.5: "float key, nested"}]},
        # Once converted these keys would collide, and JSON subscribers would lose one entry.
        {1: "int", "1": "str"},
        {b"a": "bytes", "YQ==": "str"},
        # JSON has no NaN or infinity (RFC 8259 §6): they would arrive as null.
        {"reading": math.nan},
        [math.inf, -math.inf],
        msgspec.msgpack.Ext(5, b"custom"),
    ],
    ids=[
        "int-key",
        "bytes-key",
        "nil-key",
        "array-key",
        "nested-float-key",
        "int-key-colliding",
        "bytes-key-colliding",
        "nan",
        "infinity",
        "extension-type",
    ],
)
async def test_messagepack_data_json_cannot_carry_is_refused_with_bad_request(
    running: RunningBroker, data: Any
) -> None:
    async with clients(running, Encoding.MSGPACK, Encoding.JSON, Encoding.MSGPACK) as clients_:
        pub, json_sub, msgpack_sub = clients_
        await subscribe(json_sub, "mixed")
        await subscribe(msgpack_sub, "mixed")
        await pub.send_json({"type": "publish", "id": 5, "channel": "mixed", "data": data})
        assert_bad_request(await pub.expect(Error), 5)
        # Nobody got a version of it, it took no offset, and the channel goes on.
        await publish(pub, "mixed", "next", 6)
        for sub in (json_sub, msgpack_sub):
            message = await sub.expect(Publication)
            assert (message.offset, sub.data(message.data)) == (1, "next")


async def test_json_data_messagepack_cannot_carry_is_refused_with_bad_request(
    running: RunningBroker,
) -> None:
    """A JSON integer beyond 64 bits has no MessagePack form."""
    async with clients(running, Encoding.JSON, Encoding.JSON, Encoding.MSGPACK) as clients_:
        pub, json_sub, msgpack_sub = clients_
        await subscribe(json_sub, "mixed")
        await subscribe(msgpack_sub, "mixed")
        await pub.send_json({"type": "publish", "id": 5, "channel": "mixed", "data": 10**30})
        assert_bad_request(await pub.expect(Error), 5)
        await publish(pub, "mixed", "next", 6)
        for sub in (json_sub, msgpack_sub):
            message = await sub.expect(Publication)
            assert (message.offset, sub.data(message.data)) == (1, "next")


@ENCODINGS
async def test_queued_publications_are_sent_in_batch_frames_and_in_order(
    running: RunningBroker, encoding: Encoding
) -> None:
    count = 200
    async with clients(running, encoding, encoding) as (sub, pub):
        await subscribe(sub, "burst")
        frames_before = sub.frames

        async def publish_all() -> None:
            for i in range(count):
                await pub.send(Publish(channel="burst", data=raw(pub, i)))

        async def read_all() -> list[tuple[int, Any]]:
            return [
                (m.offset, sub.data(m.data))
                for m in [await sub.expect(Publication) for _ in range(count)]
            ]

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish_all())
            reading = tasks.create_task(read_all())
        assert reading.result() == [(i + 1, i) for i in range(count)]
        frames = sub.frames - frames_before
        assert frames < count, "every publication came in a frame of its own: no batching"


@ENCODINGS
async def test_replies_queued_together_come_as_one_batch_frame_in_order(
    shared: RunningBroker, encoding: Encoding
) -> None:
    count = 100
    async with open_client(shared.url(), encoding) as client:
        frames_before = client.frames
        for i in range(count):
            await client.send(Ping(id=i))
        assert [await client.recv() for _ in range(count)] == [Pong(id=i) for i in range(count)]
        assert client.frames - frames_before < count


# --- limits and permissions ---------------------------------------------------------------------


@ENCODINGS
async def test_subscribing_past_max_subscriptions_answers_limit_exceeded(
    encoding: Encoding,
) -> None:
    settings = Settings(limits=LimitSettings(max_subscriptions=3))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        for i in range(3):
            await subscribe(client, f"c{i}", i)
        await client.send(Subscribe(id=10, channel="c3"))
        error = await client.expect(Error)
        assert (error.id, error.code) == (10, "limit_exceeded")
        # Room again after an unsubscribe.
        await client.send(Unsubscribe(id=11, channel="c0"))
        await client.expect(Unsubscribed)
        await subscribe(client, "c3", 12)


@ENCODINGS
async def test_publishing_in_a_read_only_namespace_answers_permission_denied(
    encoding: Encoding,
) -> None:
    settings = Settings(namespaces={"ro": NamespaceSettings(allow_publish=False)})
    async with serve_broker(settings) as running, clients(running, encoding, encoding) as cs:
        sub, pub = cs
        await subscribe(sub, "ro:prices")
        await pub.send(Publish(id=3, channel="ro:prices", data=raw(pub, 1)))
        error = await pub.expect(Error)
        assert (error.id, error.code) == (3, "permission_denied")
        await assert_alive(sub)  # nothing was delivered
        # Other namespaces are unaffected.
        assert (await publish(pub, "rw:prices", 1, 4)).offset == 1


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


# --- bad input ----------------------------------------------------------------------------------

#: (frame value, id expected in the error) for frames that decode but are not valid messages.
INVALID = {
    "unknown-type": ({"type": "teleport", "id": 7}, 7),
    "no-type": ({"id": 8, "channel": "news"}, 8),
    "missing-field": ({"type": "subscribe", "id": 9}, 9),
    "missing-data": ({"type": "publish", "id": 10, "channel": "news"}, 10),
    "wrong-typed-field": ({"type": "subscribe", "id": 11, "channel": 5}, 11),
    "wrong-typed-since": ({"type": "subscribe", "id": 12, "channel": "a", "since": 3}, 12),
    "wrong-typed-id": ({"type": "ping", "id": "thirteen"}, None),
    "negative-id": ({"type": "ping", "id": -1}, -1),
    "no-id": ({"type": "subscribe", "channel": "news"}, None),
    "not-a-map": ([{"type": "ping", "id": 14}], None),
    "channel-with-space": ({"type": "subscribe", "id": 15, "channel": "a b"}, 15),
    "channel-of-256-chars": ({"type": "subscribe", "id": 16, "channel": "a" * 256}, 16),
    "empty-channel": ({"type": "publish", "id": 17, "channel": "", "data": 1}, 17),
    "channel-with-newline": ({"type": "subscribe", "id": 18, "channel": "news\n"}, 18),
    "non-ascii-channel": ({"type": "subscribe", "id": 19, "channel": "nëws"}, 19),
}


def assert_bad_request(error: Error, request_id: int | None) -> None:
    assert error.code == "bad_request"
    assert error.id == request_id
    assert error.message
    assert not LEAK.search(error.message), error.message


@ENCODINGS
@pytest.mark.parametrize(("frame", "request_id"), INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_message_answers_bad_request_and_the_connection_stays_open(
    shared: RunningBroker, encoding: Encoding, frame: Any, request_id: int | None
) -> None:
    async with open_client(shared.url(), encoding) as client:
        await client.send_json(frame)
        assert_bad_request(await client.expect(Error), request_id)
        await assert_alive(client)


UNDECODABLE: dict[Encoding, list[str] | list[bytes]] = {
    Encoding.JSON: ['{"type": "ping", "id": 1', "", "ping", '{"type": "ping", "id": 1}}'],
    Encoding.MSGPACK: [b"\xc1", b"", b"\x81\xa4type", b"\x92\x01\x02\x03"],
}


@ENCODINGS
async def test_an_undecodable_frame_answers_bad_request_and_the_connection_stays_open(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        for frame in UNDECODABLE[encoding]:
            await client.ws.send(frame)
            assert_bad_request(await client.expect(Error), None)
        await assert_alive(client)


async def test_a_channel_name_of_255_characters_is_accepted(shared: RunningBroker) -> None:
    async with open_client(shared.url()) as client:
        await subscribe(client, "a" * 255)


@ENCODINGS
async def test_a_frame_of_the_wrong_kind_closes_with_1003(
    shared: RunningBroker, encoding: Encoding
) -> None:
    async with open_client(shared.url(), encoding) as client:
        ping = client.codec.encode_client(Ping(id=1))
        # Text on MessagePack, binary on JSON.
        await client.ws.send(ping if encoding is Encoding.JSON else ping.decode("latin-1"))
        received, code = await messages_until_closed(client)
        assert code == 1003
        assert [m.code for m in received if isinstance(m, Disconnect)] == [1003]


@ENCODINGS
async def test_a_message_over_max_message_bytes_closes_with_1009(encoding: Encoding) -> None:
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        # Just under the limit is fine.
        await client.send(Publish(id=1, channel="big", data=raw(client, "x" * 900)))
        await client.expect(Published)
        await client.send(Publish(id=2, channel="big", data=raw(client, "x" * 1100)))
        _, code = await messages_until_closed(client)
        assert code == 1009


@ENCODINGS
async def test_a_message_over_max_message_bytes_is_announced_with_disconnect_1009(
    encoding: Encoding,
) -> None:
    """docs/protocol.md: ``disconnect`` is sent just before a server-initiated close."""
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(settings) as running, open_client(running.url(), encoding) as client:
        await client.send(Publish(id=2, channel="big", data=raw(client, "x" * 1100)))
        received, code = await messages_until_closed(client)
        assert code == 1009
        assert [(type(m), getattr(m, "code", None)) for m in received] == [(Disconnect, 1009)]


async def test_abuse_from_one_client_does_not_disturb_another() -> None:
    settings = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with (
        serve_broker(settings) as running,
        clients(running, Encoding.JSON, Encoding.MSGPACK) as (sub, pub),
    ):
        await subscribe(sub, "calm")
        offset = 0

        async def publication_arrives() -> None:
            nonlocal offset
            offset += 1
            await publish(pub, "calm", offset, offset)
            message = await sub.expect(Publication)
            assert (message.offset, sub.data(message.data)) == (offset, offset)

        await publication_arrives()
        async with clients(running, Encoding.JSON, Encoding.MSGPACK, Encoding.JSON) as abusers:
            garbage, wrong_kind, oversize = abusers
            for i in range(100):
                await garbage.ws.send("{nope")
                if i % 10 == 0:
                    await publication_arrives()
            for _ in range(100):
                assert_bad_request(await garbage.expect(Error), None)
            await wrong_kind.ws.send("text on a MessagePack connection")
            await publication_arrives()
            await oversize.ws.send('{"type": "ping", "id": 1, "pad": "' + "x" * 2000 + '"}')
            await publication_arrives()
            assert (await messages_until_closed(wrong_kind))[1] == 1003
            assert (await messages_until_closed(oversize))[1] == 1009
            await publication_arrives()
        await publication_arrives()
        await assert_alive(sub)


async def test_a_flood_of_bad_frames_logs_only_the_first_few(running: RunningBroker) -> None:
    limit = running.broker.settings.log.max_protocol_errors_logged
    assert limit == LogSettings().max_protocol_errors_logged
    async with open_client(running.url()) as client:
        assert client.welcome is not None
        with structlog.testing.capture_logs() as logs:
            for i in range(1000):
                await client.send_json({"type": "nonsense", "id": i})
            for i in range(1000):
                error = await client.expect(Error)
                assert (error.id, error.code) == (i, "bad_request")
            await assert_alive(client)
        connection = running.broker.connections[client.welcome.client]
        assert connection.stats.protocol_errors == 1000
    warnings = [e for e in logs if e["event"] == "protocol.bad_request"]
    assert len(warnings) == limit
    assert {e["log_level"] for e in warnings} == {"warning"}


async def test_the_number_of_bad_frames_logged_follows_the_settings() -> None:
    settings = Settings(log=LogSettings(max_protocol_errors_logged=7))
    async with serve_broker(settings) as running, open_client(running.url()) as client:
        with structlog.testing.capture_logs() as logs:
            for i in range(20):
                await client.send_json({"type": "nonsense", "id": i})
            for _ in range(20):
                await client.expect(Error)
            await assert_alive(client)
    assert len([e for e in logs if e["event"] == "protocol.bad_request"]) == 7


# --- heartbeat ----------------------------------------------------------------------------------

FAST_HEARTBEAT = Settings(websocket=WebSocketSettings(heartbeat=0.5, heartbeat_grace=0.3))


@ENCODINGS
async def test_a_silent_client_gets_disconnect_4009_after_heartbeat_and_grace(
    encoding: Encoding,
) -> None:
    loop = asyncio.get_running_loop()
    async with serve_broker(FAST_HEARTBEAT) as running, open_client(running.url(), encoding) as c:
        welcomed = loop.time()
        received, code = await messages_until_closed(c)
        elapsed = loop.time() - welcomed
        assert code == 4009
        assert len(received) == 1 and isinstance(received[0], Disconnect)
        assert received[0].code == 4009
        assert 0.7 <= elapsed < 2.0, elapsed


async def test_clients_that_ping_within_the_heartbeat_stay_connected() -> None:
    loop = asyncio.get_running_loop()
    async with (
        serve_broker(FAST_HEARTBEAT) as running,
        clients(running, Encoding.JSON, Encoding.MSGPACK) as pingers,
    ):

        async def keep_pinging(client: ProtocolClient) -> None:
            request_id = 0
            deadline = loop.time() + 2.2
            while loop.time() < deadline:
                request_id += 1
                await assert_alive(client, request_id)
                await asyncio.sleep(0.2)  # the behaviour under test is a client's pace

        async with asyncio.TaskGroup() as tasks:
            for client in pingers:
                tasks.create_task(keep_pinging(client))
        assert len(running.broker.connections) == 2
