"""What the hub tests share: a hub started on its own (no sockets: the hub is an actor fed
with commands), subscribers with outboxes to read, and what they received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import msgspec

from broker.backplane import Head, MemoryBackplane
from broker.hub import (
    ChannelsQuery,
    HistoryCommand,
    Hub,
    PresenceCommand,
    Reply,
    SubscribeCommand,
    Subscriber,
    UnsubscribeCommand,
)
from broker.outbox import Outbox
from broker.settings import (
    NamespaceSettings,
    OverflowPolicy,
    Settings,
)
from protocol import (
    JSON,
    Codec,
    Encoding,
    Error,
    History,
    HistoryResult,
    Presence,
    Publication,
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    namespace_of,
)
from tests.conftest import TIMEOUT

M = TypeVar("M")

#: Namespaces with the options the tests need; other channels use the defaults (none of them).
SETTINGS = Settings(
    namespaces={
        "h": NamespaceSettings(history_size=3),
        "p": NamespaceSettings(presence=True),
        "jl": NamespaceSettings(join_leave=True),
    }
)

#: Valid JSON that MessagePack cannot carry: its integers are 64-bit at most.
HUGE = 2**70


@dataclass
class Running:
    hub: Hub
    backplane: MemoryBackplane
    settings: Settings

    async def publish(
        self, channel: str, data: Any, publisher: str | None = None, codec: Codec = JSON
    ) -> Head:
        """Publish ``data`` as a client (``publisher``) or the HTTP API (None) does."""
        options = self.settings.namespace(namespace_of(channel))
        return await self.backplane.publish(channel, raw(data, codec), codec, publisher, options)

    async def barrier(self) -> list[tuple[str, int]]:
        """Wait until the hub handled every command submitted so far; its channels and counts."""
        reply: Reply[list[tuple[str, int]]] = Reply()
        await self.hub.submit(ChannelsQuery(reply))
        return await reply.wait()

    async def subscribe(
        self, subscriber: Subscriber, channel: str, since: StreamPosition | None = None
    ) -> Subscribed:
        """Subscribe and return the ``subscribed`` reply (waiting for a recovery read)."""
        request = Subscribe(id=1, channel=channel, since=since)
        await self.hub.submit(SubscribeCommand(subscriber, request))
        return only(await answer(subscriber), Subscribed)

    async def unsubscribe(self, subscriber: Subscriber, channel: str) -> None:
        await self.hub.submit(UnsubscribeCommand(subscriber, Unsubscribe(id=2, channel=channel)))
        await self.barrier()

    async def history(
        self,
        subscriber: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        limit: int | None = None,
    ) -> list[ServerMessage]:
        request = History(id=5, channel=channel, since=since, limit=limit)
        await self.hub.submit(HistoryCommand(subscriber, request))
        return await answer(subscriber)

    async def history_offsets(
        self,
        subscriber: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        limit: int | None = None,
    ) -> list[int]:
        result = only(await self.history(subscriber, channel, since, limit), HistoryResult)
        return offsets(result.publications)

    async def presence(self, subscriber: Subscriber, channel: str) -> list[ServerMessage]:
        await self.hub.submit(PresenceCommand(subscriber, Presence(id=8, channel=channel)))
        return await answer(subscriber)


@asynccontextmanager
async def running_hub(settings: Settings = SETTINGS) -> AsyncIterator[Running]:
    """A hub and its backplane taking commands until the block ends, bounded by ``TIMEOUT``."""
    backplane = MemoryBackplane()
    hub = Hub(settings, backplane)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            await tg.start(backplane.run, hub.submit)
            yield Running(hub, backplane, settings)
            tg.cancel_scope.cancel()


def client(
    name: str,
    encoding: Encoding | None = Encoding.JSON,
    *,
    max_messages: int = 1000,
    user: str | None = None,
) -> Subscriber:
    outbox = Outbox(
        max_messages=max_messages, max_bytes=1024 * 1024, policy=OverflowPolicy.DISCONNECT
    )
    return Subscriber(id=name, encoding=encoding, outbox=outbox, user=user)


def raw(value: Any, codec: Codec = JSON) -> msgspec.Raw:
    """``value`` as a payload in ``codec``'s encoding, without touching the codec's counters."""
    if codec is JSON:
        return msgspec.Raw(msgspec.json.encode(value))
    return msgspec.Raw(msgspec.msgpack.encode(value))


def received(subscriber: Subscriber) -> list[ServerMessage]:
    """Every message queued for ``subscriber`` since the last call, decoded, in order."""
    codec = subscriber.codec()
    return [
        message
        for frame in subscriber.outbox.drain()
        for message in codec.decode_server(frame.data)
    ]


async def answer(subscriber: Subscriber) -> list[ServerMessage]:
    """What the hub queued for ``subscriber``, once it queued something."""
    await subscriber.outbox.wait_ready()
    return received(subscriber)


def only(messages: list[ServerMessage], kind: type[M]) -> M:
    """The one message in ``messages``, checked to be a ``kind``."""
    assert len(messages) == 1, messages
    message = messages[0]
    assert isinstance(message, kind), message
    return message


def publications(subscriber: Subscriber) -> list[Publication]:
    """The publications queued for ``subscriber``, checking that nothing else was."""
    messages = received(subscriber)
    assert all(isinstance(m, Publication) for m in messages), messages
    return [m for m in messages if isinstance(m, Publication)]


def offsets(items: list[Publication]) -> list[int]:
    return [item.offset for item in items]


def payload_of(subscriber: Subscriber, publication: Publication) -> Any:
    return subscriber.codec().decode_payload(publication.data)


def error_of(messages: list[ServerMessage]) -> tuple[int | None, str]:
    error = only(messages, Error)
    return error.id, error.code
