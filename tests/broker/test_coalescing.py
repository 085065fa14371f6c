"""``queue.flush_interval`` end to end: a real uvicorn server and real WebSocket clients, on
``/v1/ws`` and ``/ws/chat``; a dense stream arrives whole, in order and in batches, a sparse one
or a lone publication without the interval. The ``FlushScheduler``'s own rules are tested in
test_flush.py, which this shares its interval with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broker.flusher import FlushScheduler
from broker.settings import QueueSettings, Settings
from protocol import Encoding, Publication, Publish, Published, Subscribe, Subscribed
from tests.broker.test_flush import INTERVAL
from tests.conftest import TIMEOUT, RunningBroker, serve_broker
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio


def coalescing(interval: float) -> Settings:
    return Settings(queue=QueueSettings(flush_interval=interval))


@asynccontextmanager
async def subscribed(
    running: RunningBroker, channel: str, encoding: Encoding = Encoding.JSON
) -> AsyncIterator[ProtocolClient]:
    async with open_client(running.url(), encoding) as client:
        await client.send(Subscribe(id=1, channel=channel))
        await client.expect(Subscribed)
        yield client


async def publish(publisher: ProtocolClient, command_id: int, channel: str, value: int) -> None:
    """Publish and wait for the ``published`` reply."""
    encode = msgspec.json.encode if publisher.codec.text else msgspec.msgpack.encode
    data = msgspec.Raw(encode(value))
    await publisher.send(Publish(id=command_id, channel=channel, data=data))
    answer = await publisher.expect(Published)
    assert answer.id == command_id


@pytest.mark.parametrize("encoding", list(Encoding), ids=["json", "msgpack"])
async def test_v1_a_stream_arrives_whole_in_order_in_batches(encoding: Encoding) -> None:
    total = 100
    async with (
        serve_broker(coalescing(INTERVAL)) as running,
        subscribed(running, "room", encoding) as subscriber,
        open_client(running.url(), encoding) as publisher,
    ):
        loop = asyncio.get_running_loop()
        frames_before = subscriber.frames
        started = loop.time()
        # One at a time, each after the previous one's reply: each publication reaches the hub
        # in a turn of its own, so only the flush interval can batch them.
        for i in range(1, total + 1):
            await publish(publisher, i, "room", i)
        # Replies are not held back by the interval, or this would take total * INTERVAL.
        assert loop.time() - started < total * INTERVAL / 2
        received = [await subscriber.expect(Publication) for _ in range(total)]
        assert [message.offset for message in received] == list(range(1, total + 1))
        assert [subscriber.data(message.data) for message in received] == list(range(1, total + 1))
        frames = subscriber.frames - frames_before
        assert frames < total // 2, f"{frames} frames for {total} publications"


async def test_v1_a_lone_publication_after_quiet_arrives_without_the_interval() -> None:
    interval = 0.3
    async with (
        serve_broker(coalescing(interval)) as running,
        subscribed(running, "room") as subscriber,
        open_client(running.url()) as publisher,
    ):
        loop = asyncio.get_running_loop()
        # A stream first, so that the scheduler has flushed recently...
        await publish(publisher, 1, "room", 1)
        await publish(publisher, 2, "room", 2)
        for offset in (1, 2):
            assert (await subscriber.expect(Publication)).offset == offset
        # ...then quiet for an interval (only the clock can tell), then one publication.
        await asyncio.sleep(interval)
        sent = loop.time()
        await publish(publisher, 3, "room", 3)
        assert (await subscriber.expect(Publication)).offset == 3
        assert loop.time() - sent < interval / 2


async def test_v1_a_sparse_stream_arrives_without_the_interval_a_dense_one_with_it() -> None:
    """Two publications per interval: each arrives with no added wait (nothing to batch). Then
    back to back: once the stream is dense, publications wait for the interval, in batches."""
    interval = 0.2
    async with (
        serve_broker(coalescing(interval)) as running,
        subscribed(running, "room") as subscriber,
        open_client(running.url()) as publisher,
    ):
        loop = asyncio.get_running_loop()
        due = loop.time()
        for i in range(1, 7):
            await asyncio.sleep(max(0.0, due - loop.time()))
            sent = loop.time()
            await publish(publisher, i, "room", i)
            assert (await subscriber.expect(Publication)).offset == i
            # The earlier rule held each one until an interval after the previous one's write.
            assert loop.time() - sent < interval / 4, f"publication {i} waited"
            due = sent + interval / 2
        frames_before = subscriber.frames
        started = loop.time()
        total = 6 + FlushScheduler.DENSE * FlushScheduler.SMOOTHING + 20
        for i in range(7, total + 1):
            await publish(publisher, i, "room", i)
        received = [await subscriber.expect(Publication) for _ in range(7, total + 1)]
        assert [message.offset for message in received] == list(range(7, total + 1))
        frames = subscriber.frames - frames_before
        # Written one by one until dense (about a dozen), then one write per interval.
        assert frames < total - 6 - 10, f"{frames} frames for {total - 6} publications"
        assert loop.time() - started >= interval


@asynccontextmanager
async def chat_member(
    running: RunningBroker, *members: ClientConnection
) -> AsyncIterator[ClientConnection]:
    """A client in the room of ``/ws/chat``, which ``members`` heard join."""
    async with connect(running.url("/ws/chat"), compression=None, open_timeout=TIMEOUT) as ws:
        await ws.send("here")
        for member in (*members, ws):
            assert await receive(member, 1) == ["Client says: here"]
        yield ws


async def receive(ws: ClientConnection, count: int) -> list[str | bytes]:
    async with asyncio.timeout(TIMEOUT):
        return [await ws.recv() for _ in range(count)]


async def test_chat_a_rapid_stream_arrives_whole_and_in_order() -> None:
    total = 200
    async with (
        serve_broker(coalescing(INTERVAL)) as running,
        chat_member(running) as listener,
        chat_member(running, listener) as sender,
    ):

        async def send_all() -> None:
            for i in range(total):
                await sender.send(f"line {i}")
                if i % 10 == 0:
                    await asyncio.sleep(0.001)  # spread over many turns of the server

        expected = [f"Client says: line {i}" for i in range(total)]
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(send_all())
            heard = tasks.create_task(receive(listener, total))
            echoed = tasks.create_task(receive(sender, total))
        # The tutorial's chat sends each line to the sender too.
        assert heard.result() == expected
        assert echoed.result() == expected


async def test_chat_a_line_after_quiet_arrives_without_the_interval() -> None:
    interval = 0.3
    async with (
        serve_broker(coalescing(interval)) as running,
        chat_member(running) as listener,
    ):
        loop = asyncio.get_running_loop()
        await asyncio.sleep(interval)  # quiet: only the clock can tell
        sent = loop.time()
        await listener.send("anyone?")
        assert await receive(listener, 1) == ["Client says: anyone?"]
        assert loop.time() - sent < interval / 2
