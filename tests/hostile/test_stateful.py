"""A stateful test of what clients must receive: hypothesis drives subscribe, unsubscribe,
publish, disconnect and reconnect-with-recovery for a few clients against a real broker, and
checks every message against a simple model: each subscribed client gets every publication of
its channels, in order, exactly once; a client that comes back with ``since`` gets exactly what
it missed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.runtime import Broker
from broker.settings import NamespaceSettings, Settings
from protocol import (
    CODECS,
    Encoding,
    Ping,
    Pong,
    Publication,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tests.conftest import RunningBroker, serve_broker
from tests.hostile.loop import LoopThread
from tests.wsclient import ProtocolClient, open_client

#: Channel names, under a prefix of each run's own (the broker lives across runs).
CHANNELS = ["a", "b"]
CLIENTS = 3


@dataclass
class ClientModel:
    """What one client should have: its live connection, subscriptions and the last offset it
    saw per channel (kept across disconnections, for recovery)."""

    encoding: Encoding
    connection: ProtocolClient | None = None
    stack: AsyncExitStack | None = None
    subscribed: set[str] = field(default_factory=set)
    #: Channels it was subscribed to when it lost its connection: resubscribed with ``since``.
    to_recover: set[str] = field(default_factory=set)
    seen: dict[str, int] = field(default_factory=dict)
    #: The epoch it saw per channel.
    epochs: dict[str, str] = field(default_factory=dict)
    next_id: int = 1

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id


class Deliveries(RuleBasedStateMachine):
    thread: LoopThread
    running: RunningBroker
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        Deliveries.runs += 1
        self.prefix = f"h:run{Deliveries.runs}:"
        self.clients = [
            ClientModel(Encoding.JSON if i % 2 == 0 else Encoding.MSGPACK) for i in range(CLIENTS)
        ]
        #: Every publication per channel, by offset (1-based): the model of the streams.
        self.published: dict[str, list[int]] = {}
        self.epochs: dict[str, str] = {}
        self.counter = 0
        for client in self.clients:
            self.thread.run(self._connect(client))

    @property
    def broker(self) -> Broker:
        return self.running.broker

    async def _connect(self, client: ClientModel) -> None:
        stack = AsyncExitStack()
        client.connection = await stack.enter_async_context(
            open_client(self.running.url(), client.encoding)
        )
        client.stack = stack

    # --- rules ----------------------------------------------------------------------------------

    @rule(who=st.integers(0, CLIENTS - 1), channel=st.sampled_from(CHANNELS))
    def subscribe(self, who: int, channel: str) -> None:
        channel = self.prefix + channel
        client = self.clients[who]
        if client.connection is None or channel in client.subscribed:
            return
        self.thread.run(self._subscribe(client, channel, recover=False))

    async def _subscribe(self, client: ClientModel, channel: str, *, recover: bool) -> None:
        assert client.connection is not None
        since = None
        if recover and channel in client.seen:
            since = StreamPosition(offset=client.seen[channel], epoch=client.epochs[channel])
        request = Subscribe(id=client.request_id(), channel=channel, since=since)
        await client.connection.send(request)
        reply = await client.connection.expect(Subscribed)
        assert (reply.id, reply.channel) == (request.id, channel)
        stream = self.published.get(channel, [])
        assert reply.offset == len(stream)
        if channel in self.epochs:
            assert reply.epoch == self.epochs[channel]
        else:
            self.epochs[channel] = reply.epoch
        if since is not None and since.epoch != reply.epoch:
            # The stream it knew is gone (docs/protocol.md: with nothing retained and nobody
            # subscribed, the in-memory backplane forgets it): no recovery, a fresh start.
            assert not reply.recovered
        elif since is not None:
            assert reply.recovered
            missed = [p.offset for p in reply.publications]
            assert missed == list(range(since.offset + 1, len(stream) + 1))
            for publication in reply.publications:
                assert self._data(client, publication) == stream[publication.offset - 1]
        client.subscribed.add(channel)
        client.seen[channel] = len(stream)
        client.epochs[channel] = reply.epoch

    @rule(who=st.integers(0, CLIENTS - 1), channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, who: int, channel: str) -> None:
        channel = self.prefix + channel
        client = self.clients[who]
        if client.connection is None or channel not in client.subscribed:
            return
        self.thread.run(self._unsubscribe(client, channel))

    async def _unsubscribe(self, client: ClientModel, channel: str) -> None:
        assert client.connection is not None
        request = Unsubscribe(id=client.request_id(), channel=channel)
        await client.connection.send(request)
        reply = await client.connection.expect(Unsubscribed)
        assert (reply.id, reply.channel) == (request.id, channel)
        client.subscribed.discard(channel)
        client.seen.pop(channel, None)
        self._forget_unused(channel)

    def _forget_unused(self, channel: str) -> None:
        """docs/protocol.md: a stream with nothing retained and nobody subscribed is forgotten."""
        if not self.published.get(channel) and not any(
            channel in c.subscribed for c in self.clients
        ):
            self.epochs.pop(channel, None)

    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(1, 3))
    def publish(self, channel: str, count: int) -> None:
        channel = self.prefix + channel
        self.thread.run(self._publish(channel, count))

    async def _publish(self, channel: str, count: int) -> None:
        stream = self.published.setdefault(channel, [])
        for _ in range(count):
            self.counter += 1
            head = await self.broker.publish(
                channel, msgspec.Raw(str(self.counter).encode()), CODECS[Encoding.JSON], None
            )
            stream.append(self.counter)
            assert head.offset == len(stream)
            if channel in self.epochs:
                assert head.epoch == self.epochs[channel]
            else:
                self.epochs[channel] = head.epoch
        for client in self.clients:
            if client.connection is None or channel not in client.subscribed:
                continue
            for _ in range(count):
                message = await client.connection.expect(Publication)
                assert message.channel == channel
                assert message.offset == client.seen[channel] + 1
                assert self._data(client, message) == stream[message.offset - 1]
                client.seen[channel] = message.offset

    @rule(who=st.integers(0, CLIENTS - 1))
    def disconnect(self, who: int) -> None:
        client = self.clients[who]
        if client.connection is None:
            return
        stack = client.stack
        assert stack is not None
        self.thread.run(stack.aclose())
        client.connection = client.stack = None
        client.to_recover = set(client.subscribed)
        client.subscribed.clear()
        for channel in client.to_recover:
            self._forget_unused(channel)

    @precondition(lambda self: any(c.connection is None for c in self.clients))
    @rule(data=st.data())
    def reconnect_and_recover(self, data: st.DataObject) -> None:
        gone = [c for c in self.clients if c.connection is None]
        client = data.draw(st.sampled_from(gone))
        self.thread.run(self._reconnect(client))

    async def _reconnect(self, client: ClientModel) -> None:
        await self._connect(client)
        for channel in sorted(client.to_recover):
            await self._subscribe(client, channel, recover=True)
        client.to_recover.clear()

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def nothing_else_arrives(self) -> None:
        """A round trip on each connection brings back its pong and nothing before it."""
        self.thread.run(self._quiet())

    async def _quiet(self) -> None:
        for client in self.clients:
            if client.connection is None:
                continue
            request = Ping(id=client.request_id())
            await client.connection.send(request)
            assert await client.connection.expect(Pong) == Pong(id=request.id)

    def teardown(self) -> None:
        for client in self.clients:
            if client.stack is not None:
                self.thread.run(client.stack.aclose())
        self.thread.run(self._forget_all())

    async def _forget_all(self) -> None:
        from tests.conftest import wait_until

        await wait_until(lambda: not self.broker.connections)

    def _data(self, client: ClientModel, publication: Publication) -> Any:
        assert client.connection is not None
        return client.connection.data(publication.data)


@pytest.fixture
def broker_thread(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[LoopThread, RunningBroker]]:
    thread = LoopThread()
    stack = AsyncExitStack()
    settings_ = Settings(namespaces={"h": NamespaceSettings(history_size=10_000)})
    try:
        with caplog.at_level(logging.WARNING):
            yield thread, thread.run(stack.enter_async_context(serve_broker(settings_)))
            thread.run(stack.aclose())
    finally:
        thread.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_every_client_gets_exactly_what_the_model_says(
    broker_thread: tuple[LoopThread, RunningBroker],
) -> None:
    thread, running = broker_thread
    Deliveries.thread, Deliveries.running = thread, running
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Deliveries,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
