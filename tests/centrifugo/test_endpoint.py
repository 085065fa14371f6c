"""``/connection/websocket`` at the protocol level: Centrifugo's commands, replies and pushes over
a real socket, and a channel shared with ``/v1/ws`` subscribers."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker.centrifugo.connection import RENDERED
from broker.settings import (
    LimitSettings,
    NamespaceSettings,
    OverflowPolicy,
    QueueSettings,
    Settings,
    WebSocketSettings,
)
from protocol import JSON, Publication, Publish, StreamPosition, Subscribe, Subscribed
from tests.centrifugo.cfclient import CentrifugoClient, open_centrifugo
from tests.conftest import TIMEOUT, serve_broker
from tests.wsclient import open_client

pytestmark = pytest.mark.anyio

PATH = "/connection/websocket"


def settings(heartbeat: float = 25.0, heartbeat_grace: float = 10.0) -> Settings:
    return Settings(
        default_namespace=NamespaceSettings(history_size=100, presence=True, join_leave=True),
        namespaces={"plain": NamespaceSettings()},
        websocket=WebSocketSettings(heartbeat=heartbeat, heartbeat_grace=heartbeat_grace),
    )


async def test_connect_subscribe_publish_receive() -> None:
    async with (
        serve_broker(settings()) as running,
        open_centrifugo(running.url(PATH), connected=False) as client,
    ):
        result = await client.connect(name="js", version="5")
        assert result["client"] and result["pong"] is True and result["ping"] == 25
        subscribed = await client.call({"subscribe": {"channel": "news"}})
        assert subscribed["subscribe"]["recoverable"] is True
        assert subscribed["subscribe"]["epoch"]
        published = await client.call({"publish": {"channel": "news", "data": {"n": 1}}})
        assert published == {"id": published["id"], "publish": {}}
        push = await client.until(lambda m: "push" in m and "pub" in m["push"])
        assert push["push"]["channel"] == "news"
        assert push["push"]["pub"]["data"] == {"n": 1}
        assert push["push"]["pub"]["offset"] == 1
        assert push["push"]["pub"]["info"]["client"] == result["client"]


async def test_several_commands_in_one_frame_get_their_replies() -> None:
    async with serve_broker(settings()) as running, open_centrifugo(running.url(PATH)) as client:
        ids = await client.send(
            {"subscribe": {"channel": "a"}},
            {"subscribe": {"channel": "b"}},
            {"ping": {}},
        )
        # Each reply names its command; the SDKs match them by id, not by order.
        replies = {r["id"]: r for r in [await client.until(lambda m: "id" in m) for _ in ids]}
        assert sorted(replies) == ids
        assert "subscribe" in replies[ids[0]] and "subscribe" in replies[ids[1]]
        assert replies[ids[2]] == {"id": ids[2], "ping": {}}


async def test_both_protocols_share_offsets_and_epochs() -> None:
    async with (
        serve_broker(settings()) as running,
        open_centrifugo(running.url(PATH)) as centrifugo,
        open_client(running.url()) as ours,
    ):
        subscribed = await centrifugo.call({"subscribe": {"channel": "mixed"}})
        await ours.send(Subscribe(id=1, channel="mixed"))
        reply = await ours.expect(Subscribed)
        assert reply.epoch == subscribed["subscribe"]["epoch"]
        await ours.send(Publish(id=2, channel="mixed", data=msgspec.Raw(b'"from v1"')))
        await centrifugo.call({"publish": {"channel": "mixed", "data": "from centrifugo"}})
        pubs: list[dict[str, Any]] = []
        while len(pubs) < 2:
            pushed = await centrifugo.until(lambda m: "pub" in m.get("push", {}))
            pubs.append(pushed["push"]["pub"])
        assert [(p["offset"], p["data"]) for p in pubs] == [
            (1, "from v1"),
            (2, "from centrifugo"),
        ]
        seen: list[Publication] = []
        while len(seen) < 2:
            message = await ours.recv()
            if isinstance(message, Publication):
                seen.append(message)
        assert [(p.offset, p.epoch) for p in seen] == [(1, reply.epoch), (2, reply.epoch)]


async def test_recover_after_reconnect() -> None:
    async with serve_broker(settings()) as running:
        async with open_centrifugo(running.url(PATH)) as first:
            subscribed = (await first.call({"subscribe": {"channel": "r"}}))["subscribe"]
            epoch = subscribed["epoch"]
            await first.call({"publish": {"channel": "r", "data": 1}})
        async with open_centrifugo(running.url(PATH)) as publisher:
            for n in (2, 3):
                await publisher.call({"publish": {"channel": "r", "data": n}})
        async with open_centrifugo(running.url(PATH)) as second:
            request = {"channel": "r", "recover": True, "offset": 1, "epoch": epoch}
            result = (await second.call({"subscribe": request}))["subscribe"]
            assert result["recovered"] is True and result["was_recovering"] is True
            assert [(p["offset"], p["data"]) for p in result["publications"]] == [(2, 2), (3, 3)]
            assert result["offset"] == 3 and result["epoch"] == epoch
            stale = {"channel": "s", "recover": True, "offset": 5, "epoch": "gone"}
            result = (await second.call({"subscribe": stale}))["subscribe"]
            assert result.get("recovered", False) is False


async def test_history_since_limit_reverse() -> None:
    async with serve_broker(settings()) as running, open_centrifugo(running.url(PATH)) as client:
        for n in range(1, 6):
            await client.call({"publish": {"channel": "h", "data": n}})
        top = (await client.call({"history": {"channel": "h"}}))["history"]
        assert top.get("publications", []) == [] and top["offset"] == 5
        epoch = top["epoch"]

        async def offsets(request: dict[str, object]) -> list[int]:
            reply = await client.call({"history": {"channel": "h", **request}})
            return [p["offset"] for p in reply["history"].get("publications", [])]

        assert await offsets({"limit": -1}) == [1, 2, 3, 4, 5]
        assert await offsets({"limit": 2}) == [4, 5]
        assert await offsets({"limit": 2, "reverse": True}) == [5, 4]
        assert await offsets({"limit": 2, "since": {"offset": 1, "epoch": epoch}}) == [2, 3]
        since_4 = {"offset": 4, "epoch": epoch}
        assert await offsets({"limit": 2, "since": since_4, "reverse": True}) == [3, 2]
        assert await offsets({"limit": -1, "since": since_4, "reverse": True}) == [3, 2, 1]
        error = await client.call({"history": {"channel": "plain:x", "limit": 1}})
        assert error["error"]["code"] == 108


async def test_presence_and_stats() -> None:
    async with (
        serve_broker(settings()) as running,
        open_centrifugo(running.url(PATH)) as one,
        open_centrifugo(running.url(PATH)) as two,
    ):
        await one.call({"subscribe": {"channel": "p"}})
        await two.call({"subscribe": {"channel": "p"}})
        join = await one.until(lambda m: "join" in m.get("push", {}))
        assert join["push"]["channel"] == "p" and join["push"]["join"]["info"]["client"]
        presence = (await one.call({"presence": {"channel": "p"}}))["presence"]["presence"]
        assert len(presence) == 2
        stats = (await one.call({"presence_stats": {"channel": "p"}}))["presence_stats"]
        assert stats == {"num_clients": 2, "num_users": 1}
        await two.call({"unsubscribe": {"channel": "p"}})
        leave = await one.until(lambda m: "leave" in m.get("push", {}))
        assert leave["push"]["leave"]["info"]["client"] == join["push"]["join"]["info"]["client"]


async def test_errors_keep_the_connection() -> None:
    async with serve_broker(settings()) as running, open_centrifugo(running.url(PATH)) as client:
        bad = await client.call({"subscribe": {"channel": "no spaces"}})
        assert bad["error"]["code"] == 102
        await client.call({"subscribe": {"channel": "twice"}})
        again = await client.call({"subscribe": {"channel": "twice"}})
        assert again["error"]["code"] == 105
        rpc = await client.call({"rpc": {"method": "x", "data": {}}})
        assert rpc["error"]["code"] == 108
        not_in = await client.call({"unsubscribe": {"channel": "elsewhere"}})
        assert not_in == {"id": not_in["id"], "unsubscribe": {}}
        typed = await client.call({"history": {"channel": "h", "limit": "many"}})
        assert typed["error"]["code"] == 107
        assert (await client.call({"ping": {}}))["ping"] == {}


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"id": 1, "subscribe": {"channel": "x"}}, 3501),  # not connected yet
    ],
)
async def test_refused_connections_get_a_disconnect(first: dict[str, object], code: int) -> None:
    async with (
        serve_broker(settings()) as running,
        open_centrifugo(running.url(PATH), connected=False) as client,
    ):
        await client.send(first)
        message = await client.receive()
        assert message["push"]["disconnect"]["code"] == code
        assert message["push"]["disconnect"].get("reconnect", False) is False
        with pytest.raises(ConnectionClosed):
            await client.receive()


async def test_server_pings_and_a_silent_client_is_dropped() -> None:
    async with (
        serve_broker(settings(heartbeat=0.5, heartbeat_grace=1.0)) as running,
        open_centrifugo(running.url(PATH)) as client,
    ):
        # ``receive`` answers pings: the connection outlives several heartbeats.
        await client.call({"subscribe": {"channel": "alive"}})
        async with asyncio.timeout(TIMEOUT):
            while client.pings < 3:
                await client.call({"ping": {}})
                await asyncio.sleep(0.1)
        # Now silent: no pongs. The server gives up with 3012 "no pong".
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = await client.websocket.recv()
                if "disconnect" in frame:
                    break
        assert '"code":3012' in frame


async def test_protobuf_is_refused_at_the_handshake() -> None:
    async with serve_broker(settings()) as running:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(running.url(PATH), subprotocols=["centrifuge-protobuf"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 400
        assert b"Protobuf" in refused.value.response.body


async def test_v1_subscriber_recovers_a_centrifugo_publication() -> None:
    async with serve_broker(settings()) as running, open_centrifugo(running.url(PATH)) as client:
        subscribed = (await client.call({"subscribe": {"channel": "x"}}))["subscribe"]
        await client.call({"publish": {"channel": "x", "data": {"k": "v"}}})
        async with open_client(running.url()) as ours:
            since = StreamPosition(offset=0, epoch=subscribed["epoch"])
            await ours.send(Subscribe(id=1, channel="x", since=since))
            reply = await ours.expect(Subscribed)
            assert reply.recovered
            assert [bytes(p.data) for p in reply.publications] == [b'{"k":"v"}']


async def test_no_connect_in_time_is_stale() -> None:
    async with (
        serve_broker(settings(heartbeat=0.3)) as running,
        open_centrifugo(running.url(PATH), connected=False) as client,
    ):
        message = await client.receive()
        assert message["push"]["disconnect"] == {"code": 3502, "reason": "stale"}
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 3502


async def test_the_connection_limit_says_come_back_later() -> None:
    limited = Settings(limits=LimitSettings(max_connections=1))
    async with (
        serve_broker(limited) as running,
        open_centrifugo(running.url(PATH)),
        open_centrifugo(running.url(PATH), connected=False) as refused,
    ):
        message = await refused.receive()
        assert message["push"]["disconnect"]["code"] == 4013
        assert message["push"]["disconnect"]["reconnect"] is True


async def test_dropped_publications_are_insufficient_state() -> None:
    """With ``drop_oldest``, a client that falls behind loses publications: Centrifugo has no
    ``gap``, so it is told to reconnect and recover (3010)."""
    dropping = Settings(
        default_namespace=NamespaceSettings(history_size=1000),
        queue=QueueSettings(max_messages=10, overflow=OverflowPolicy.DROP_OLDEST),
        websocket=WebSocketSettings(transport_buffer_bytes=16 * 1024),
    )
    pad = "x" * 20_000
    async with serve_broker(dropping) as running:
        async with connect(running.url(PATH), max_queue=1, max_size=None) as websocket:
            client = CentrifugoClient(websocket)
            await client.connect()
            await client.call({"subscribe": {"channel": "fast"}})
            # The client reads nothing now; the broker publishes far more than it can queue.
            for n in range(300):
                data = msgspec.json.encode({"n": n, "pad": pad})
                await running.broker.publish("fast", msgspec.Raw(data), JSON, None)
            message = await client.until(lambda m: "disconnect" in m.get("push", {}))
            assert message["push"]["disconnect"] == {
                "code": 3010,
                "reason": "insufficient state",
                "reconnect": True,
            }


async def test_a_publication_is_rendered_once_for_all_centrifugo_subscribers() -> None:
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(serve_broker(settings()))
        clients = [
            await stack.enter_async_context(open_centrifugo(running.url(PATH))) for _ in range(5)
        ]
        for client in clients:
            await client.call({"subscribe": {"channel": "fan"}})
        hits = RENDERED.hits
        await running.broker.publish("fan", msgspec.Raw(b'"once"'), JSON, None)
        for client in clients:
            push = await client.until(lambda m: "pub" in m.get("push", {}))
            assert push["push"]["pub"]["data"] == "once"
        assert RENDERED.hits - hits == len(clients) - 1


async def test_a_message_too_big_gets_a_disconnect_first() -> None:
    small = Settings(websocket=WebSocketSettings(max_message_bytes=1024))
    async with serve_broker(small) as running, open_centrifugo(running.url(PATH)) as client:
        await client.websocket.send("x" * 1100)
        message = await client.receive()
        assert message["push"]["disconnect"] == {"code": 3501, "reason": "message too big"}
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_limits_as_on_v1() -> None:
    limited = Settings(
        limits=LimitSettings(max_subscriptions=1, publish_rate=0.001, publish_burst=2),
        namespaces={"closed": NamespaceSettings(allow_publish=False)},
    )
    async with serve_broker(limited) as running, open_centrifugo(running.url(PATH)) as client:
        await client.call({"subscribe": {"channel": "one"}})
        too_many = await client.call({"subscribe": {"channel": "two"}})
        assert too_many["error"]["code"] == 106
        denied = await client.call({"publish": {"channel": "closed:x", "data": 1}})
        assert denied["error"]["code"] == 103
        assert "publish" in await client.call({"publish": {"channel": "one", "data": 1}})
        limited_reply = await client.call({"publish": {"channel": "one", "data": 2}})
        assert limited_reply["error"] == {
            "code": 111,
            "message": "publish rate limit exceeded",
            "temporary": True,
        }
