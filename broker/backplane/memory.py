"""The in-memory backplane: one process is the whole broker.

Each channel's stream is a record in this process: its epoch, its latest offset and a deque of
retained publications. A record is dropped when nothing is retained and nobody watches the
channel; the next publication then starts a new stream with a new epoch, which is exactly the
contract ("the epoch changes whenever retained history is lost"). A restart loses everything, so
every epoch changes.

``publish`` assigns the offset and hands the publication to the hub before it returns, in the
caller's task. Offsets reach the hub in order even when the mailbox is full: anyio's memory
streams keep waiting senders in FIFO order and never let a newcomer pass one that waits.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskStatus

from broker.backplane.base import Deliver, Head, LivePublication, Page
from broker.settings import NamespaceSettings
from protocol import ClientInfo, Codec, Encoding, Join, Leave, PublicationFrames


@dataclass(slots=True)
class Retained:
    publication: PublicationFrames
    #: ``time.monotonic()`` after which it is evicted; ``math.inf`` without a TTL.
    expires: float


@dataclass(slots=True)
class Stream:
    epoch: str = field(default_factory=lambda: secrets.token_urlsafe(6))
    offset: int = 0
    history: deque[Retained] = field(default_factory=deque)

    def evict(self, now: float) -> None:
        history = self.history
        while history and history[0].expires <= now:
            history.popleft()


class MemoryBackplane:
    kind = "memory"

    def __init__(self) -> None:
        self._streams: dict[str, Stream] = {}
        self._watched: set[str] = set()
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._deliver: Deliver | None = None

    @property
    def ready(self) -> bool:
        return self._deliver is not None

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None]) -> None:
        self._deliver = deliver
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self._deliver = None

    def _stream(self, channel: str) -> Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream()
        return stream

    def _forget_if_unused(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None and not stream.history and channel not in self._watched:
            del self._streams[channel]

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
    ) -> Head:
        stream = self._stream(channel)
        stream.offset += 1
        publication = PublicationFrames(
            channel=channel,
            offset=stream.offset,
            epoch=stream.epoch,
            publisher=publisher,
            data=data,
            source=codec,
        )
        if converted:
            for encoding, payload in converted.items():
                publication.add_payload(encoding, payload)
        if options.history_size:
            now = time.monotonic()
            ttl = options.history_ttl
            stream.history.append(Retained(publication, now + ttl if ttl > 0 else math.inf))
            while len(stream.history) > options.history_size:
                stream.history.popleft()
            stream.evict(now)
        head = Head(stream.epoch, stream.offset)
        deliver = self._deliver
        if channel in self._watched and deliver is not None:
            await deliver(LivePublication(publication))
        else:
            self._forget_if_unused(channel)
        return head

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> Head:
        # Nothing to wait for: the publication is done when ``publish`` returns (``on_settled``
        # is for futures only).
        return await self.publish(channel, data, codec, publisher, options, converted)

    def watch(self, channel: str) -> Head | None:
        self._watched.add(channel)
        stream = self._stream(channel)
        return Head(stream.epoch, stream.offset)

    def unwatch(self, channel: str) -> None:
        self._watched.discard(channel)
        self._forget_if_unused(channel)

    def _retained(self, channel: str) -> tuple[Head, list[PublicationFrames]]:
        stream = self._streams.get(channel)
        if stream is None:
            # Never published to (or forgotten): an empty stream with a fresh epoch.
            stream = self._stream(channel)
            head = Head(stream.epoch, stream.offset)
            self._forget_if_unused(channel)
            return head, []
        stream.evict(time.monotonic())
        publications = [item.publication for item in stream.history]
        head = Head(stream.epoch, stream.offset)
        self._forget_if_unused(channel)
        return head, publications

    async def read(
        self, channel: str, after: int, limit: int | None, options: NamespaceSettings
    ) -> Page:
        head, publications = self._retained(channel)
        selected = [p for p in publications if p.offset > after]
        return Page(head, selected if limit is None else selected[:limit])

    async def latest(self, channel: str, limit: int | None, options: NamespaceSettings) -> Page:
        head, publications = self._retained(channel)
        if limit is not None:
            publications = publications[max(0, len(publications) - limit) :] if limit else []
        return Page(head, publications)

    def presence_add(self, channel: str, member: ClientInfo) -> None:
        self._presence.setdefault(channel, {})[member.client] = member

    def presence_remove(self, channel: str, member: ClientInfo) -> None:
        members = self._presence.get(channel)
        if members is not None:
            members.pop(member.client, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> list[ClientInfo]:
        return list(self._presence.get(channel, {}).values())

    def announce(self, channel: str, message: Join | Leave) -> None:
        pass  # No other process to tell.
