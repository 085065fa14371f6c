"""One broker, whatever the number of processes: on Redis the chat room of ``/ws/chat`` spans
every process (its leave notice included), ``GET /v1/channels`` and the disconnect API answer for
the whole broker, and the cross-process control path disconnects a client, every connection of a
user, or subscribes or unsubscribes a user, on whichever process they are connected to.

The first tests run real ``broker serve`` processes; those that need a user id on a connection
(nothing sets one before authentication exists) run two brokers in this process, each with its
own backplane, as separate processes would be."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from broker.backplane.control import (
    DisconnectClient,
    DisconnectUser,
    SubscribeUser,
    UnsubscribeUser,
)
from broker.settings import Settings
from protocol import (
    Disconnect,
    Encoding,
    Publication,
    StreamPosition,
    Subscribed,
    Unsubscribed,
)
from tests.broker.backplane.redis_helpers import eventually, on_redis, presence_of
from tests.broker.backplane.test_behaviour import (
    assert_alive,
    client_id,
    clients,
    publish,
    serve_ready,
    subscribe,
)
from tests.broker.backplane.test_processes import processes, ws_url
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


def chat_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws/chat"


async def hear(ws: ClientConnection, text: str) -> None:
    """Read ``ws`` until ``text`` arrives (other chat lines are skipped)."""
    async with asyncio.timeout(TIMEOUT):
        while (await ws.recv()) != text:
            pass


async def test_the_chat_room_spans_every_process_leave_notices_included(
    redis_server: RedisServer,
) -> None:
    async with (
        processes(redis_server, 2) as (port_a, port_b),
        ws_connect(chat_url(port_a), open_timeout=TIMEOUT) as alice,
        ws_connect(chat_url(port_b), open_timeout=TIMEOUT) as bob,
    ):
        # Bob joins the room on process b in the background: alice repeats until he hears her.
        async with asyncio.timeout(TIMEOUT):
            while True:
                await alice.send("hello from a")
                try:
                    heard = await asyncio.wait_for(bob.recv(), 0.5)
                except TimeoutError:
                    continue
                if heard == "Client says: hello from a":
                    break
        await bob.send("hello from b")
        await hear(alice, "Client says: hello from b")
        await hear(bob, "Client says: hello from b")  # said once, heard once by each
        await bob.close()
        await hear(alice, "A client has left the chat.")


async def test_channels_and_disconnect_over_http_answer_for_every_process(
    redis_server: RedisServer,
) -> None:
    async with (
        processes(redis_server, 2) as (port_a, port_b),
        open_client(ws_url(port_a)) as on_a,
        open_client(ws_url(port_b), Encoding.MSGPACK) as on_b,
        open_client(ws_url(port_b)) as also_b,
        httpx.AsyncClient(timeout=TIMEOUT) as http,
    ):
        await subscribe(on_a, "news")
        await subscribe(on_b, "news")
        await subscribe(also_b, "h:only-b")
        for port in (port_a, port_b):
            listing = await http.get(f"http://127.0.0.1:{port}/v1/channels")
            assert listing.status_code == 200
            assert listing.json() == {
                "channels": [
                    {"channel": "h:only-b", "subscribers": 1},
                    {"channel": "news", "subscribers": 2},
                ]
            }
        # Disconnected through process a, connected to process b.
        answer = await http.post(
            f"http://127.0.0.1:{port_a}/v1/clients/{client_id(on_b)}/disconnect"
        )
        assert answer.json() == {"client": client_id(on_b), "disconnected": True}
        assert (await on_b.expect(Disconnect)).code == 4010
        await asyncio.wait_for(on_b.ws.wait_closed(), TIMEOUT)
        assert on_b.ws.close_code == 4010
        nobody = await http.post(f"http://127.0.0.1:{port_a}/v1/clients/nobody/disconnect")
        assert nobody.json() == {"client": "nobody", "disconnected": False}
        await assert_alive(also_b)
        await assert_alive(on_a)


# --- users: two brokers in this process ---------------------------------------------------------


def as_user(running: RunningBroker, client: ProtocolClient, user: str) -> None:
    """Give ``client``'s connection a user id, as an authenticated connection would have."""
    running.broker.connections[client_id(client)].subscriber.user = user


async def test_every_connection_of_a_user_is_disconnected_on_every_process(
    redis_server: RedisServer,
) -> None:
    settings = on_redis(redis_server.url)
    async with (
        serve_ready(settings) as a,
        serve_ready(settings) as b,
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (alice_a, bob_a),
        clients(b.url(), Encoding.MSGPACK) as (alice_b,),
    ):
        as_user(a, alice_a, "alice")
        as_user(b, alice_b, "alice")
        as_user(a, bob_a, "bob")
        assert await a.broker.control.count(DisconnectUser("alice")) == 2
        for client in (alice_a, alice_b):
            assert (await client.expect(Disconnect)).code == 4010
            await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
        await assert_alive(bob_a)
        assert await b.broker.control.count(DisconnectClient("gone")) == 0


async def test_a_user_is_unsubscribed_from_a_channel_on_every_process(
    redis_server: RedisServer,
) -> None:
    settings = on_redis(redis_server.url)
    async with (
        serve_ready(settings) as a,
        serve_ready(settings) as b,
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (pub, carol_a),
        clients(b.url(), Encoding.MSGPACK, Encoding.JSON) as (alice_b, dave_b),
    ):
        as_user(b, alice_b, "alice")
        for client in (alice_b, dave_b, carol_a):
            await subscribe(client, "p:room")
            await subscribe(client, "news", request_id=2)
        assert await presence_of(pub, "p:room") == sorted(
            client_id(c) for c in (alice_b, dave_b, carol_a)
        )
        assert await a.broker.control.count(UnsubscribeUser("alice", "p:room")) == 1
        # The leave of alice reaches the others; she is told, and gets nothing more there.
        gone = None
        async with asyncio.timeout(TIMEOUT):
            while not isinstance(gone, Unsubscribed):
                gone = await alice_b.recv()
        assert gone == Unsubscribed(id=0, channel="p:room")
        await publish(pub, "p:room", "after", 1)
        await publish(pub, "news", "still", 2)
        got = await alice_b.expect(Publication)
        assert (got.channel, alice_b.data(got.data)) == ("news", "still")
        remaining = sorted(client_id(c) for c in (dave_b, carol_a))

        async def alice_left() -> bool:
            return await presence_of(pub, "p:room") == remaining

        await eventually(alice_left)  # her presence entry is removed in Redis in the background


async def test_a_user_is_subscribed_to_a_channel_on_every_process(
    redis_server: RedisServer,
) -> None:
    settings = on_redis(redis_server.url)
    async with (
        serve_ready(settings) as a,
        serve_ready(settings) as b,
        clients(a.url(), Encoding.JSON, Encoding.JSON) as (pub, alice_a),
        clients(b.url(), Encoding.MSGPACK, Encoding.JSON) as (alice_b, dave_b),
    ):
        as_user(a, alice_a, "alice")
        as_user(b, alice_b, "alice")
        first = await publish(pub, "feed", "before", 1)
        assert await a.broker.control.count(SubscribeUser("alice", "feed")) == 2
        for alice in (alice_a, alice_b):
            subscribed = await alice.expect(Subscribed)
            assert (subscribed.id, subscribed.channel) == (0, "feed")
            assert (subscribed.epoch, subscribed.offset) == (first.epoch, first.offset)
        # Subscribed already: counted nowhere, and nothing more sent.
        assert await b.broker.control.count(SubscribeUser("alice", "feed")) == 0
        await publish(pub, "feed", "after", 2)
        for alice in (alice_a, alice_b):
            got = await alice.expect(Publication)
            assert (got.channel, got.offset, alice.data(got.data)) == ("feed", 2, "after")
        await assert_alive(dave_b)
        assert "feed" not in b.broker.connections[client_id(dave_b)].subscriber.channels

        # One named connection, from a position: the missed publications come with it.
        await publish(pub, "h:other", "o1", 3)
        await publish(pub, "h:other", "o2", 4)
        since = StreamPosition(offset=1, epoch=(await publish(pub, "h:other", "o3", 5)).epoch)
        named = SubscribeUser("alice", "h:other", client=client_id(alice_b), since=since)
        assert await a.broker.control.count(named) == 1
        subscribed = await alice_b.expect(Subscribed)
        assert (subscribed.id, subscribed.recovered, subscribed.offset) == (0, True, 3)
        assert [alice_b.data(p.data) for p in subscribed.publications] == ["o2", "o3"]
        assert "h:other" not in a.broker.connections[client_id(alice_a)].subscriber.channels


async def test_in_memory_the_control_path_is_this_process() -> None:
    async with serve_broker(Settings()) as running, clients(running.url(), Encoding.JSON) as (c,):
        await subscribe(c, "news")
        assert await running.broker.control.channels() == [("news", 1)]
        assert await running.broker.control.count(DisconnectClient(client_id(c))) == 1
        assert (await c.expect(Disconnect)).code == 4010
