"""``/v1/ws`` over real sockets (docs/protocol.md §1), in both encodings where encoding matters:
welcome and subprotocols, subscribe, publish, ping, batches, limits and permissions."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from broker.settings import (
    LimitSettings,
    NamespaceSettings,
    Settings,
    WebSocketSettings,
)
from protocol import (
    MSGPACK,
    Encoding,
    Error,
    Ping,
    Pong,
    Publication,
    Publish,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from tests.broker.v1.helpers import (
    ENCODINGS,
    assert_alive,
    assert_bad_request,
    clients,
    publish,
    raw,
    subscribe,
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


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


async def refused_and_the_channel_goes_on(pub: ProtocolClient, *subs: ProtocolClient) -> None:
    """The publish (id 5) on ``mixed`` was refused with ``bad_request``: nobody got a version of
    it, it took no offset, and the channel goes on."""
    assert_bad_request(await pub.expect(Error), 5)
    await publish(pub, "mixed", "next", 6)
    for sub in subs:
        message = await sub.expect(Publication)
        assert (message.offset, sub.data(message.data)) == (1, "next")


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
        await refused_and_the_channel_goes_on(pub, json_sub, msgpack_sub)


@pytest.mark.parametrize(
    "data",
    [
        "100000000000000000000000000000",
        "-9223372036854775809",
        "18446744073709551616",
        "1e400",
        "-1E+999",
        '{"ok": [1, {"deep": -123456789012345678901234567890}]}',
    ],
    ids=[
        "int-30-digits",
        "below-int64",
        "above-uint64",
        "exponent",
        "negative-exponent",
        "nested-int-of-30-digits",
    ],
)
async def test_json_data_messagepack_cannot_carry_is_refused_with_bad_request(
    running: RunningBroker, data: str
) -> None:
    """Integers beyond 64 bits have no MessagePack form, numbers beyond a float's range no
    value: refused when published, with nothing delivered to anyone, and the channel goes on."""
    async with clients(running, Encoding.JSON, Encoding.JSON, Encoding.MSGPACK) as clients_:
        pub, json_sub, msgpack_sub = clients_
        await subscribe(json_sub, "mixed")
        await subscribe(msgpack_sub, "mixed")
        await pub.ws.send(f'{{"type":"publish","id":5,"channel":"mixed","data":{data}}}')
        await refused_and_the_channel_goes_on(pub, json_sub, msgpack_sub)


@pytest.mark.parametrize(
    "data",
    [
        {"n": 9223372036854775807, "m": -9223372036854775808, "f": 1.5e99, "g": -2.5e-99},
        {"big": 18446744073709551615, "f": 1.7976931348623157e308, "digits": "1234567890" * 3},
        {"text": "caf\u00e9 \u65e5\u672c \U0001f600", "escaped": '\u0041\n"', "none": None},
        [True, False, None, [], {}, [[[1]]], -0.0, 0, '\u0041\n\t"\\'],
    ],
    ids=["int64-bounds", "uint64-and-float-bounds", "unicode", "literals"],
)
async def test_json_data_at_the_edges_of_messagepack_reaches_every_subscriber_equal(
    running: RunningBroker, data: Any
) -> None:
    """What both encodings carry arrives equal in both, converted once for the channel."""
    async with clients(running, Encoding.JSON, Encoding.JSON, Encoding.MSGPACK) as clients_:
        pub, json_sub, msgpack_sub = clients_
        await subscribe(json_sub, "mixed")
        await subscribe(msgpack_sub, "mixed")
        before = MSGPACK.payloads_converted
        await publish(pub, "mixed", data, 2)
        for sub in (json_sub, msgpack_sub):
            message = await sub.expect(Publication)
            assert sub.data(message.data) == data
        assert MSGPACK.payloads_converted - before == 1


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
