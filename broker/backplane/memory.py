"""The in-memory backplane: one process is the whole broker.

Each channel's stream is a record in this process: its epoch, its latest offset and a deque of
retained publications. The epoch changes only when history is lost (the contract): a record of a
namespace that keeps history stays while nobody watches it, even empty (offset 0), as on Redis:
with ``history_ttl = 0`` for as long as the process lives, otherwise for a day (or the TTL, if
longer) after its last use. A record of a namespace without history is dropped as soon as nobody
watches it: nothing can be recovered from it anyway. A restart loses everything, so every epoch
changes.

Idempotency keys are remembered per channel for ``backplane.idempotency_window`` seconds: a
publish repeating one is answered with the first publication's head and not published again.

A retained publication is one small frozen Struct (``Retained``): its offset, the time it was
accepted, its publisher and its payload as the publisher encoded it, copied out of the frame it
came in, once. Nothing else is kept: not the frames delivered live, not the payload converted
for the other encoding. A read builds fresh ``PublicationFrames`` for the publications it returns
(as the Redis backplane does from its stream), which convert and encode on demand. So one
retained publication costs its payload plus a small constant (docs/operations.md, "History
memory"); ``benchmarks/history_memory.py`` measures it.

``publish`` assigns the offset and hands the publication to the hub before it returns, in the
caller's task. Offsets reach the hub in order even when the mailbox is full: the hub's mailbox
(``broker.mailbox``) keeps waiting senders in FIFO order and never lets a newcomer pass one that
waits. ``publish_now`` is the same publish (``_publish``) for a caller that would rather not
wait: the publication goes to the hub without a wait (``deliver_now``) or not at all, and then
nothing is recorded and the caller goes the awaited way; a newcomer finds the mailbox full for
as long as a publish waits for room, so it cannot pass one either.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskStatus

from broker.backplane.base import (
    BackplaneUnavailable,
    ControlEvent,
    Deliver,
    DeliverNow,
    Head,
    LivePublication,
    Page,
)
from broker.backplane.control import Control, ControlAnswer, ControlRequest, Gathering
from broker.settings import NamespaceSettings, Settings
from protocol import ClientInfo, Codec, Encoding, Join, Leave, PublicationFrames, namespace_of


class Retained(msgspec.Struct, frozen=True, gc=False):
    """One retained publication, compact: 56 bytes besides its payload, offset and time (no
    dict, not tracked by the garbage collector: it refers to nothing that could refer back)."""

    offset: int
    #: ``time.monotonic()`` when the publication was accepted (the live publication's own
    #: float); ``history_ttl`` counts from it.
    accepted: float
    #: The payload in the publisher's encoding: its own ``bytes``, not a view that would keep
    #: the whole client frame it was read from alive.
    data: bytes
    source: Codec
    publisher: str | None

    def publication(self, channel: str, epoch: str) -> PublicationFrames:
        """A fresh publication to hand out: frames and conversions are made on demand."""
        return PublicationFrames(
            channel=channel,
            offset=self.offset,
            epoch=epoch,
            publisher=self.publisher,
            data=msgspec.Raw(self.data),
            source=self.source,
            accepted=self.accepted,
        )


#: How long the record of a history namespace's channel outlives its last use (as on Redis).
_HEAD_KEEP = 24 * 3600.0


@dataclass(slots=True)
class Stream:
    epoch: str = field(default_factory=lambda: secrets.token_urlsafe(6))
    offset: int = 0
    #: Created with the first retained publication: an empty ``deque`` is 624 bytes, and most
    #: channels (a personal channel per connection) retain nothing (docs/performance.md).
    history: deque[Retained] | None = None
    #: ``time.monotonic()`` until which the record is kept while unwatched and empty.
    keep_until: float = 0.0

    def evict(self, now: float, ttl: float) -> None:
        """Drop the publications retained ``ttl`` seconds or longer (none when ``ttl`` is 0)."""
        if ttl <= 0:
            return
        history = self.history
        while history and history[0].accepted + ttl <= now:
            history.popleft()

    def after(self, offset: int, limit: int | None) -> list[Retained]:
        """The retained publications above ``offset``, oldest first, at most ``limit``."""
        # Offsets rise along the deque: walk back from the newest only as far as needed.
        newer = list(
            itertools.takewhile(lambda item: item.offset > offset, reversed(self.history or ()))
        )
        newer.reverse()
        return newer if limit is None else newer[:limit]

    def latest(self, limit: int | None) -> list[Retained]:
        """The latest ``limit`` retained publications (all when None), oldest first."""
        if limit is None:
            return list(self.history or ())
        newest = list(itertools.islice(reversed(self.history or ()), max(0, limit)))
        newest.reverse()
        return newest


class MemoryBackplane:
    kind = "memory"

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._streams: dict[str, Stream] = {}
        self._watched: set[str] = set()
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._deliver: Deliver | None = None
        self._deliver_now: DeliverNow | None = None
        #: (channel, idempotency key) -> the head it was published at, and the order of expiry.
        self._keys: dict[tuple[str, str], Head] = {}
        self._key_expiry: deque[tuple[float, tuple[str, str]]] = deque()
        self._gatherings: dict[str, Gathering] = {}

    @property
    def ready(self) -> bool:
        return self._deliver is not None

    async def run(
        self,
        deliver: Deliver,
        *,
        task_status: TaskStatus[None],
        deliver_now: DeliverNow | None = None,
    ) -> None:
        self._deliver = deliver
        self._deliver_now = deliver_now
        task_status.started()
        try:
            while True:
                await anyio.sleep(60)
                self._sweep(time.monotonic())
        finally:
            self._deliver = self._deliver_now = None

    def _sweep(self, now: float) -> None:
        """Forget the records kept past their time, and expired idempotency keys."""
        for channel in [c for c, s in self._streams.items() if s.keep_until <= now]:
            self._forget_if_unused(channel)
        self._expire_keys(now)

    def _expire_keys(self, now: float) -> None:
        expiry = self._key_expiry
        while expiry and expiry[0][0] <= now:
            self._keys.pop(expiry.popleft()[1], None)

    def _keep(self, stream: Stream, options: NamespaceSettings, now: float) -> None:
        if options.history_size:
            ttl = options.history_ttl
            stream.keep_until = math.inf if ttl <= 0 else now + max(_HEAD_KEEP, ttl)

    def _stream(self, channel: str) -> Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream()
        return stream

    def _forget_if_unused(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if (
            stream is not None
            and not stream.history
            and channel not in self._watched
            and stream.keep_until <= time.monotonic()
        ):
            del self._streams[channel]

    def _publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None,
        idempotency_key: str | None,
        deliver_now: DeliverNow | None,
    ) -> tuple[Head, LivePublication | None] | None:
        """A publish, but for the wait: the head, and the live publication for the hub when
        this process watches the channel (for the caller to deliver). With ``deliver_now``, that
        goes to it first, before anything is recorded: if it takes it, nothing is left to
        deliver; if not, None is returned, and nothing was done (``publish_now``)."""
        now = time.monotonic()
        if idempotency_key is not None:
            self._expire_keys(now)
            seen = self._keys.get((channel, idempotency_key))
            if seen is not None:
                return seen, None
        stream = self._stream(channel)
        offset = stream.offset + 1
        # Positional: keyword arguments to a class cost a dictionary per call.
        publication = PublicationFrames(channel, offset, stream.epoch, publisher, data, codec, now)
        if converted:
            for encoding, payload in converted.items():
                publication.add_payload(encoding, payload)
        live = None
        watched = channel in self._watched and self._deliver is not None
        if watched:
            live = LivePublication(publication)
            if deliver_now is not None:
                # Handed over before the offset is taken: refused, there is nothing to undo.
                # Nothing runs in between, so the hub sees it in the order of offsets.
                if not deliver_now(live):
                    return None
                live = None
        self._keep(stream, options, now)
        stream.offset = offset
        if options.history_size:
            history = stream.history
            if history is None:
                history = stream.history = deque()
            history.append(Retained(offset, now, bytes(data), codec, publisher))
            while len(history) > options.history_size:
                history.popleft()
            stream.evict(now, options.history_ttl)
        head = Head(stream.epoch, offset)
        if idempotency_key is not None:
            key = (channel, idempotency_key)
            self._keys[key] = head
            self._key_expiry.append((now + self._settings.backplane.idempotency_window, key))
        if not watched:
            self._forget_if_unused(channel)
        return head, live

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        published = self._publish(
            channel, data, codec, publisher, options, converted, idempotency_key, None
        )
        assert published is not None  # only ``deliver_now`` refuses
        head, live = published
        deliver = self._deliver
        if live is not None and deliver is not None:
            await deliver(live)
        return head

    def publish_now(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head | None:
        deliver_now = self._deliver_now
        if deliver_now is None:
            return None
        published = self._publish(
            channel, data, codec, publisher, options, converted, idempotency_key, deliver_now
        )
        return None if published is None else published[0]

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        # Nothing to wait for: the publication is done when ``publish`` returns (``on_settled``
        # is for futures only).
        return await self.publish(
            channel, data, codec, publisher, options, converted, idempotency_key
        )

    def watch(self, channel: str) -> Head | None:
        self._watched.add(channel)
        stream = self._stream(channel)
        self._keep(stream, self._settings.namespace(namespace_of(channel)), time.monotonic())
        return Head(stream.epoch, stream.offset)

    def unwatch(self, channel: str) -> None:
        self._watched.discard(channel)
        self._forget_if_unused(channel)

    def _retained(self, channel: str, options: NamespaceSettings) -> tuple[Head, Stream | None]:
        """The channel's head, and its stream when it has one (expired publications evicted)."""
        stream = self._streams.get(channel)
        if stream is None:
            # Never published to (or forgotten): an empty stream with a fresh epoch, kept where
            # the namespace keeps history, so that the epoch read now stays valid.
            stream = self._stream(channel)
            self._keep(stream, options, time.monotonic())
            head = Head(stream.epoch, stream.offset)
            self._forget_if_unused(channel)
            return head, None
        stream.evict(time.monotonic(), options.history_ttl)
        head = Head(stream.epoch, stream.offset)
        self._forget_if_unused(channel)
        return head, stream

    async def read(
        self, channel: str, after: int, limit: int | None, options: NamespaceSettings
    ) -> Page:
        head, stream = self._retained(channel, options)
        retained = [] if stream is None else stream.after(after, limit)
        return Page(head, [item.publication(channel, head.epoch) for item in retained])

    async def latest(self, channel: str, limit: int | None, options: NamespaceSettings) -> Page:
        head, stream = self._retained(channel, options)
        retained = [] if stream is None else stream.latest(limit)
        return Page(head, [item.publication(channel, head.epoch) for item in retained])

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

    def room_publish(self, room: str, payload: bytes) -> None:
        pass  # No other process to tell.

    async def control(self, command: Control) -> list[ControlAnswer]:
        deliver = self._deliver
        if deliver is None:
            raise BackplaneUnavailable("the backplane is not running")
        request = ControlRequest(id=secrets.token_urlsafe(9), origin=self.kind, command=command)
        gathering = self._gatherings[request.id] = Gathering()
        gathering.expect(1)  # this process is the whole broker
        try:
            await deliver(ControlEvent(request))
            return await gathering.wait(self._settings.backplane.timeout)
        finally:
            del self._gatherings[request.id]

    def answer(self, answer: ControlAnswer) -> None:
        gathering = self._gatherings.get(answer.id)
        if gathering is not None:
            gathering.add(answer)
