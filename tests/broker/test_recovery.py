"""History, recovery and presence on the server side (docs/protocol.md §1,
"Channels, offsets, epochs and recovery"), over real sockets with the protocol-level test client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest

from broker.settings import NamespaceSettings, Settings, WebSocketSettings
from protocol import (
    JSON,
    ClientInfo,
    Disconnect,
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
)
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.rawclient import RawClient, masked_frame, open_raw
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    namespaces={
        "small": NamespaceSettings(history_size=3),
        "ttl": NamespaceSettings(history_size=100, history_ttl=0.3),
        "big": NamespaceSettings(history_size=100_000),
        "room": NamespaceSettings(presence=True, join_leave=True),
    }
)


@pytest.fixture
async def running() -> AsyncIterator[RunningBroker]:
    async with serve_broker(SETTINGS) as running_broker:
        yield running_broker


@asynccontextmanager
async def clients(running: RunningBroker, count: int) -> AsyncIterator[list[ProtocolClient]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_client(running.url())) for _ in range(count)]


async def publish(client: ProtocolClient, channel: str, value: Any) -> Published:
    request_id = client.frames + 1000  # any id; the reply is read right away
    data = msgspec.Raw(client.codec.encode_payload(value))
    await client.send(Publish(id=request_id, channel=channel, data=data))
    return await client.expect(Published)


async def subscribe(
    client: ProtocolClient, channel: str, since: StreamPosition | None = None
) -> Subscribed:
    await client.send(Subscribe(id=1, channel=channel, since=since))
    return await client.expect(Subscribed)


async def history(client: ProtocolClient, channel: str) -> HistoryResult:
    await client.send(History(id=2, channel=channel))
    return await client.expect(HistoryResult)


def offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


# --- history limits -----------------------------------------------------------------------------


async def test_history_size_keeps_only_the_latest_publications(running: RunningBroker) -> None:
    async with clients(running, 1) as [client]:
        for i in range(1, 6):
            await publish(client, "small:log", i)
        result = await history(client, "small:log")
        assert result.offset == 5
        assert offsets(result.publications) == [3, 4, 5]
        assert [client.data(p.data) for p in result.publications] == [3, 4, 5]


async def test_history_ttl_evicts_publications_older_than_the_ttl(running: RunningBroker) -> None:
    async with clients(running, 1) as [client]:
        first = await publish(client, "ttl:log", 1)
        await publish(client, "ttl:log", 2)
        await asyncio.sleep(0.4)  # the behaviour under test is the passing of time (ttl 0.3 s)
        third = await publish(client, "ttl:log", 3)
        assert third.epoch == first.epoch  # history remained (the newest one): same stream
        result = await history(client, "ttl:log")
        assert offsets(result.publications) == [3]


@pytest.mark.parametrize(
    ("channel", "expire"), [("small:log", False), ("ttl:log", True)], ids=["size", "ttl"]
)
async def test_since_older_than_what_is_retained_gives_recovered_false(
    running: RunningBroker, channel: str, expire: bool
) -> None:
    async with clients(running, 2) as [publisher, subscriber]:
        await publish(publisher, channel, 1)
        await publish(publisher, channel, 2)
        if expire:
            await asyncio.sleep(0.4)  # past the ttl: 1 and 2 are evicted by the next publish
        for i in range(3, 6):
            latest = await publish(publisher, channel, i)
        # Retained now: 3, 4, 5. Offset 2 is missing for a client that saw only 1.
        reply = await subscribe(subscriber, channel, StreamPosition(offset=1, epoch=latest.epoch))
        assert (reply.recovered, reply.publications) == (False, [])
        assert (reply.epoch, reply.offset) == (latest.epoch, 5)


async def test_since_with_another_epoch_gives_recovered_false(running: RunningBroker) -> None:
    async with clients(running, 1) as [client]:
        await publish(client, "big:log", 1)
        reply = await subscribe(client, "big:log", StreamPosition(offset=0, epoch="other"))
        assert (reply.recovered, reply.publications, reply.offset) == (False, [], 1)


async def test_since_with_the_current_epoch_gives_exactly_the_missed_ones_then_live(
    running: RunningBroker,
) -> None:
    async with clients(running, 2) as [publisher, subscriber]:
        for i in range(1, 6):
            latest = await publish(publisher, "small:log", i)
        # The oldest retained is 3: a client that saw 2 has missed exactly 3, 4, 5.
        reply = await subscribe(
            subscriber, "small:log", StreamPosition(offset=2, epoch=latest.epoch)
        )
        assert reply.recovered is True
        assert offsets(reply.publications) == [3, 4, 5]
        assert [subscriber.data(p.data) for p in reply.publications] == [3, 4, 5]
        await publish(publisher, "small:log", 6)
        live = await subscriber.expect(Publication)
        assert (live.offset, subscriber.data(live.data)) == (6, 6)
        # A client that missed nothing recovers nothing, and is live.
        async with clients(running, 1) as [current]:
            reply = await subscribe(
                current, "small:log", StreamPosition(offset=6, epoch=latest.epoch)
            )
            assert (reply.recovered, reply.publications) == (True, [])


async def test_a_subscribe_since_racing_a_publisher_sees_every_later_offset_exactly_once(
    running: RunningBroker,
) -> None:
    """While a publisher publishes without pause, clients subscribe with ``since`` at various
    points: each must get every offset after its ``since`` once, in order, across the
    ``subscribed`` reply's publications and the live messages that follow."""
    subscribers = 12
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(open_client(running.url()))
        readers: list[asyncio.Task[tuple[int, list[int]]]] = []
        last: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def read_from(since: int, epoch: str) -> tuple[int, list[int]]:
            client = await stack.enter_async_context(open_client(running.url()))
            reply = await subscribe(client, "big:race", StreamPosition(offset=since, epoch=epoch))
            assert reply.recovered is True
            seen = offsets(reply.publications)
            while not (last.done() and seen and seen[-1] >= last.result()):
                try:
                    message = await client.expect(Publication, timeout=0.05)
                except TimeoutError:
                    continue  # check ``last`` again
                seen.append(message.offset)
            return since, seen

        offset, i = 0, 0
        async with asyncio.timeout(TIMEOUT):
            while len(readers) < subscribers:
                i += 1
                reply = await publish(publisher, "big:race", i)
                offset = reply.offset
                if offset % 15 == 0:
                    since = offset - 1 - len(readers) % 5  # some missed 1, some up to 5
                    readers.append(asyncio.create_task(read_from(since, reply.epoch)))
            for _ in range(30):  # and more after the last subscribe
                i += 1
                offset = (await publish(publisher, "big:race", i)).offset
            last.set_result(offset)
            results = await asyncio.gather(*readers)
    for since, seen in results:
        assert seen == list(range(since + 1, offset + 1)), f"since {since}"


async def test_a_recovery_larger_than_the_outbox_byte_limit_is_delivered_not_dropped() -> None:
    """Recovery promises the missed publications while they are retained. The broker queues the
    ``subscribed`` reply whole; here it is ~2 MB, above ``queue.max_bytes`` (1 MiB)."""
    settings = Settings(namespaces={"big": NamespaceSettings(history_size=100)})
    async with (
        serve_broker(settings) as running,
        open_client(running.url()) as publisher,
        # The reply is one frame of ~2 MB: more than the websockets client takes by default.
        open_client(running.url(), max_size=None) as subscriber,
    ):
        pad = "x" * 20_000
        for i in range(1, 101):
            latest = await publish(publisher, "big:log", {"i": i, "pad": pad})
        await subscriber.send(
            Subscribe(id=1, channel="big:log", since=StreamPosition(offset=0, epoch=latest.epoch))
        )
        reply = await subscriber.recv()
        assert not isinstance(reply, Disconnect), f"dropped instead of recovered: {reply}"
        assert isinstance(reply, Subscribed)
        assert offsets(reply.publications) == list(range(1, 101))


# --- presence -----------------------------------------------------------------------------------


async def presence(client: ProtocolClient, channel: str) -> list[ClientInfo]:
    await client.send(Presence(id=3, channel=channel))
    return (await client.expect(PresenceResult)).clients


async def test_presence_lists_the_subscribers_with_a_null_user_and_join_leave_reach_the_others(
    running: RunningBroker,
) -> None:
    async with clients(running, 3) as [a, b, outsider]:
        assert a.welcome and b.welcome
        await subscribe(a, "room:1")
        await subscribe(b, "room:1")
        assert await a.expect(Join) == Join(channel="room:1", client=b.welcome.client, user=None)
        members = await presence(outsider, "room:1")
        assert sorted(members, key=lambda c: c.client) == sorted(
            [ClientInfo(client=a.welcome.client), ClientInfo(client=b.welcome.client)],
            key=lambda c: c.client,
        )
        assert all(member.user is None for member in members)
        await b.ws.close()
        assert await a.expect(Leave) == Leave(channel="room:1", client=b.welcome.client, user=None)
        assert [m.client for m in await presence(outsider, "room:1")] == [a.welcome.client]


async def open_vanishing(running: RunningBroker, channel: str) -> RawClient:
    """A client that subscribes to ``channel``, then falls silent: no frame, no close, no reply
    to pings, its socket left open (a peer whose network went away)."""
    raw = await open_raw(running.port, "/v1/ws", subprotocol="broker.v1.json", rcvbuf=1 << 16)
    await raw.send(masked_frame(JSON.encode_client(Subscribe(id=1, channel=channel))))
    return raw


async def test_a_vanished_connection_leaves_presence_with_a_leave_after_heartbeat_and_grace() -> (
    None
):
    settings = Settings(
        websocket=WebSocketSettings(heartbeat=0.5, heartbeat_grace=0.3),
        namespaces={"room": NamespaceSettings(presence=True, join_leave=True)},
    )
    loop = asyncio.get_running_loop()
    async with serve_broker(settings) as running, open_client(running.url()) as watcher:
        assert watcher.welcome is not None
        await subscribe(watcher, "room:1")
        vanished = await open_vanishing(running, "room:1")
        try:
            join = await watcher.expect(Join)
            joined = loop.time()
            members = {m.client for m in await presence(watcher, "room:1")}
            assert members == {watcher.welcome.client, join.client}

            async def keep_alive() -> None:
                # The watcher must not fall silent itself while it waits.
                for request_id in itertools.count(100):
                    await watcher.send(Ping(id=request_id))
                    await asyncio.sleep(0.2)  # the behaviour under test is a client's pace

            async with asyncio.TaskGroup() as tasks:
                pinger = tasks.create_task(keep_alive())
                message = await watcher.recv()
                while isinstance(message, Pong):
                    message = await watcher.recv()
                pinger.cancel()
            left = loop.time()
            assert message == Leave(channel="room:1", client=join.client, user=None)
            assert left - joined >= 0.5  # not before a heartbeat was missed
            assert join.client not in running.broker.connections
            await watcher.send(Presence(id=3, channel="room:1"))
            message = await watcher.recv()
            while isinstance(message, Pong):
                message = await watcher.recv()
            assert isinstance(message, PresenceResult)
            assert [m.client for m in message.clients] == [watcher.welcome.client]
        finally:
            vanished.reset()
