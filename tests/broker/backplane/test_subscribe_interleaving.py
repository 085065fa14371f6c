"""A subscribe on one broker while another broker publishes into the channel, on Redis, for
``/v1/ws`` and for Centrifugo's ``/connection/websocket``.

The subscribing broker learns of the channel's publications over pub/sub and of its position by
reading the head in Redis; a publication can fall between the two. Whatever the interleaving, the
contract (docs/protocol.md, "Subscribing and recovery") holds: the reply gives a position, and the
subscriber then gets every later publication exactly once, in order. The channels keep no history,
so a publication the broker missed cannot be read back: it would show as a ``gap`` (on Centrifugo,
a 3010 close), never be hidden.

* Held: the subscribing broker's link from Redis is stalled (a fault proxy) from before it
  subscribes until after a publication that Redis made once the subscription was in place, so
  that publication reaches the broker before the head and is already counted in it. Redis's own
  ``MONITOR`` shows the order: subscription, publication, head read.
* Overtaken: the answers to the subscribing broker's commands are held (``HeadGate``) while its
  pub/sub connection flows, so a publication that Redis made after the head read reaches the
  broker's hub before the head: it waits for the head, then follows the reply.
* Churn: another broker publishes in a loop while a client subscribes, takes a few publications
  and unsubscribes, over and over (the channel is unwatched and watched again each time, with
  publications in flight; every other time the subscribe comes before the unsubscribe's reply,
  while the broker is still subscribed in Redis).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
import pytest

from broker.backplane.redis import RedisBackplane
from broker.settings import BackplaneKind, BackplaneSettings, Settings
from protocol import (
    Publication,
    Publish,
    Published,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.broker.backplane.test_behaviour import serve_ready
from tests.centrifugo.cfclient import CentrifugoClient, open_centrifugo
from tests.conftest import TIMEOUT, RunningBroker, wait_until
from tests.faultproxy import Direction, FaultProxy, Relay
from tests.redis_server import RedisServer
from tests.wsclient import ProtocolClient, open_client

pytestmark = pytest.mark.anyio

PREFIX = "broker"


def on_redis(url: str) -> Settings:
    backplane = BackplaneSettings(kind=BackplaneKind.REDIS, redis_url=url, key_prefix=PREFIX)
    return Settings(backplane=backplane)


# --- one subscriber, either protocol ------------------------------------------------------------


class Subscription(Protocol):
    """A client of one protocol, seen as: subscribe, the reply's position, the publications."""

    async def subscribe(self, channel: str) -> None:
        """Send the subscribe (the reply is read by ``subscribed``)."""

    async def subscribed(self) -> tuple[str, int]:
        """The reply's epoch and offset (publications before it are an error)."""

    async def publication(self) -> int:
        """The next publication's offset (a gap or a close is an error)."""

    async def unsubscribe(self, channel: str, *, resubscribe: bool) -> list[int]:
        """Unsubscribe (and with ``resubscribe``, subscribe again at once, without waiting for
        the reply; ``subscribed`` reads its reply); the offsets of the publications before the
        reply to the unsubscribe."""


class V1Subscription:
    def __init__(self, client: ProtocolClient) -> None:
        self.client = client
        self.ids = itertools.count(1)

    async def subscribe(self, channel: str) -> None:
        await self.client.send(Subscribe(id=next(self.ids), channel=channel))

    async def subscribed(self) -> tuple[str, int]:
        reply = await self.client.expect(Subscribed)
        return reply.epoch, reply.offset

    async def publication(self) -> int:
        message = await self.client.recv()
        assert isinstance(message, Publication), f"expected a publication, got {message!r}"
        return message.offset

    async def unsubscribe(self, channel: str, *, resubscribe: bool) -> list[int]:
        await self.client.send(Unsubscribe(id=next(self.ids), channel=channel))
        if resubscribe:
            await self.client.send(Subscribe(id=next(self.ids), channel=channel))
        offsets = []
        while not isinstance(message := await self.client.recv(), Unsubscribed):
            assert isinstance(message, Publication), f"expected a publication, got {message!r}"
            offsets.append(message.offset)
        return offsets


class CentrifugoSubscription:
    def __init__(self, client: CentrifugoClient) -> None:
        self.client = client
        self.request = 0

    async def subscribe(self, channel: str) -> None:
        (self.request,) = await self.client.send({"subscribe": {"channel": channel}})

    async def subscribed(self) -> tuple[str, int]:
        reply = await self.client.receive()
        assert reply.get("id") == self.request and "subscribe" in reply, reply
        result: dict[str, Any] = reply["subscribe"]
        return result["epoch"], result.get("offset", 0)  # Centrifugo leaves out zero values

    async def publication(self) -> int:
        message = await self.client.receive()
        assert "pub" in message.get("push", {}), f"expected a publication, got {message!r}"
        return int(message["push"]["pub"].get("offset", 0))

    async def unsubscribe(self, channel: str, *, resubscribe: bool) -> list[int]:
        commands = [{"unsubscribe": {"channel": channel}}]
        if resubscribe:
            commands.append({"subscribe": {"channel": channel}})
        request, *again = await self.client.send(*commands)
        if again:
            self.request = again[0]
        offsets = []
        while (message := await self.client.receive()).get("id") != request:
            assert "pub" in message.get("push", {}), f"expected a publication, got {message!r}"
            offsets.append(int(message["push"]["pub"].get("offset", 0)))
        assert "unsubscribe" in message, message
        return offsets


PROTOCOLS = ["v1", "centrifugo"]


@asynccontextmanager
async def subscription(broker: RunningBroker, protocol: str) -> AsyncIterator[Subscription]:
    if protocol == "v1":
        async with open_client(broker.url()) as client:
            yield V1Subscription(client)
    else:
        async with open_centrifugo(broker.url("/connection/websocket")) as centrifugo:
            yield CentrifugoSubscription(centrifugo)


async def publish(client: ProtocolClient, channel: str, request_id: int) -> int:
    """Publish and wait for ``published``; its offset."""
    await client.send(Publish(id=request_id, channel=channel, data=msgspec.Raw(b"1")))
    reply = await client.expect(Published)
    return reply.offset


# --- the held publication -----------------------------------------------------------------------


class Monitor:
    """Redis's ``MONITOR`` on a connection of its own: every command Redis runs, in the order it
    runs them, as ``"NAME" "arg" ...`` (lower-cased here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[str] = []
        self._seen = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readline() == b"+OK\r\n"
        self._task = asyncio.create_task(self._listen(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._writer.close()

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        # Each line: +<time> [<db> <client>] "NAME" "arg" ...
        while line := await reader.readline():
            self.commands.append(line.decode(errors="replace").split("]", 1)[-1].strip().lower())
            self._seen.set()

    async def until(self, *parts: str) -> int:
        """Wait until a command with every one of ``parts`` (quoted words) has run; its index."""
        quoted = [f'"{part.lower()}"' for part in parts]
        async with asyncio.timeout(TIMEOUT):
            while True:
                for index, command in enumerate(self.commands):
                    if all(part in command for part in quoted):
                        return index
                self._seen.clear()
                await self._seen.wait()


#: What Redis runs, and ``MONITOR`` shows, when the head script reads a channel's offset, and when
#: the publish script takes the next one (both are Lua scripts: ``redis_scripts``).
HEAD_READ = ("hget",)
PUBLISHED = ("hincrby",)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_publication_between_the_subscription_and_the_head_read_is_delivered_once(
    redis_server: RedisServer, protocol: str
) -> None:
    """Redis publishes after the subscribing broker's subscription is in place and before that
    broker reads the head, and the publication reaches the broker before the head does: it is
    counted in the reply's position, and not delivered again."""
    channel = "held"
    live = f"{PREFIX}:c:{channel}"
    meta = f"{PREFIX}:m:{channel}"
    async with (
        serve_ready(on_redis(redis_server.url)) as publisher_broker,
        FaultProxy(redis_server.port) as proxy,
        serve_ready(on_redis(f"redis://127.0.0.1:{proxy.port}/0")) as subscriber_broker,
        open_client(publisher_broker.url()) as publisher,
        subscription(subscriber_broker, protocol) as subscriber,
        Monitor(redis_server.port) as monitor,
    ):
        # From here the subscribing broker hears nothing from Redis until ``resume``.
        proxy.stall(Direction.DOWN)
        await subscriber.subscribe(channel)
        subscribed_at = await monitor.until("subscribe", live)
        first = await publish(publisher, channel, 1)
        proxy.resume()
        epoch, offset = await subscriber.subscribed()
        second = await publish(publisher, channel, 2)
        assert (first, second) == (1, 2)
        # The interleaving under test did happen: subscription, publication, then head read.
        published_at = await monitor.until(*PUBLISHED, meta, "o")
        read_at = await monitor.until(*HEAD_READ, meta, "o")
        assert subscribed_at < published_at < read_at, monitor.commands
        assert epoch
        # The reply counts the first publication (it was in the head), which is not sent again.
        assert offset == first
        assert await subscriber.publication() == second


class HeadGate(FaultProxy):
    """A fault proxy that can hold what Redis sends on the broker's command connections (the head
    read's answer among them) while its pub/sub connection flows. The pub/sub connection is the
    one that has sent ``SUBSCRIBE`` (its health channel, as soon as the link is up)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        #: The relays (by id) of pub/sub connections.
        self.pubsub: set[int] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def __aenter__(self) -> HeadGate:
        await super().__aenter__()
        return self

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        relay: Relay,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if direction is Direction.UP and b"SUBSCRIBE" in data:
                    self.pubsub.add(id(relay))
                while direction is Direction.DOWN and id(relay) not in self.pubsub:
                    if self.flowing.is_set():
                        break
                    await self.flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_publication_that_overtakes_the_head_is_held_and_delivered_after_the_reply(
    redis_server: RedisServer, protocol: str
) -> None:
    """Redis publishes after the subscribing broker read the head, and the publication reaches
    the broker before the head's answer does: it waits for the head, then follows the reply."""
    channel = "overtaken"
    meta = f"{PREFIX}:m:{channel}"
    async with (
        serve_ready(on_redis(redis_server.url)) as publisher_broker,
        HeadGate(redis_server.port) as gate,
        serve_ready(on_redis(f"redis://127.0.0.1:{gate.port}/0")) as subscriber_broker,
        open_client(publisher_broker.url()) as publisher,
        subscription(subscriber_broker, protocol) as subscriber,
        Monitor(redis_server.port) as monitor,
    ):
        # A first subscription: Redis then knows the head script (else the head read would
        # load it first, and wait for the gate).
        await subscriber.subscribe("warm")
        await subscriber.subscribed()
        # Answers to the subscribing broker's commands wait; its pub/sub connection flows.
        gate.flowing.clear()
        await subscriber.subscribe(channel)
        read_at = await monitor.until(*HEAD_READ, meta, "o")
        first = await publish(publisher, channel, 1)
        published_at = await monitor.until(*PUBLISHED, meta, "o")
        assert read_at < published_at, monitor.commands
        # The publication reaches the subscribing broker (its pub/sub connection is not held)
        # and is queued for its hub before the head's answer is let through.
        backplane = subscriber_broker.broker.backplane
        assert isinstance(backplane, RedisBackplane)
        await wait_until(lambda: backplane.shards[0].received == 1)
        gate.flowing.set()
        epoch, offset = await subscriber.subscribed()
        assert epoch and (offset, first) == (0, 1)
        assert await subscriber.publication() == first
        second = await publish(publisher, channel, 2)
        assert await subscriber.publication() == second


# --- churn --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subscribing_again_and_again_while_another_broker_publishes_loses_nothing(
    redis_server: RedisServer, protocol: str
) -> None:
    """Each subscription gets exactly the publications after its reply's offset, in order, with
    no gap, whether the channel was watched, being unwatched or unwatched when it came."""
    channel = "churn"
    settings = on_redis(redis_server.url)
    async with (
        serve_ready(settings) as publisher_broker,
        serve_ready(settings) as subscriber_broker,
        open_client(publisher_broker.url()) as publisher,
        subscription(subscriber_broker, protocol) as subscriber,
    ):
        stop = asyncio.Event()

        async def publish_until_stopped() -> None:
            for request_id in itertools.count(1):
                if stop.is_set():
                    return
                await publish(publisher, channel, request_id)

        publishing = asyncio.create_task(publish_until_stopped())
        try:
            await subscriber.subscribe(channel)
            for round_ in range(60):
                _, offset = await subscriber.subscribed()
                offsets = [await subscriber.publication() for _ in range(2)]
                # Every other time, the channel is watched again before the broker's pub/sub
                # connection has dropped its subscription (the same frame).
                again = round_ % 2 == 0
                offsets += await subscriber.unsubscribe(channel, resubscribe=again)
                assert offsets == list(range(offset + 1, offset + 1 + len(offsets)))
                assert not publishing.done()
                if not again:
                    await subscriber.subscribe(channel)
        finally:
            stop.set()
            await asyncio.wait_for(publishing, TIMEOUT)
