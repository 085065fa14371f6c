"""The hub actor: one task per process owns every channel, subscriber, offset, epoch and history.

Everything that changes subscription state arrives as a command through one bounded mailbox
(``submit`` waits for room, which is how a flood of publishes pushes back on its reader) and is
handled to completion before the next, so no lock is needed and "subscribe, then catch up from
history, then go live" is one atomic step (PROTOCOL.md §1, recovery).

The hub never awaits a client. Delivering is ``outbox.offer(frame)``; a subscriber whose outbox
refuses a frame is detached at once (its writer then drops it with 4008), so a slow client costs
the hub nothing after its first refusal. Each publication is encoded at most once per encoding
(``PublicationFrames``), and subscribers are grouped by encoding so the per-subscriber work is
one ``offer``.

The chat room of ``/ws/chat`` (PROTOCOL.md §3) is a channel of the same machinery whose frames
are plain text, kept apart from client channels by a name no client can use.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.logs import get_logger
from broker.outbox import Outbox
from broker.settings import NamespaceSettings, Settings
from protocol import (
    CODECS,
    ClientInfo,
    Codec,
    Encoding,
    Error,
    ErrorCode,
    Frame,
    History,
    HistoryResult,
    Join,
    Leave,
    Message,
    Presence,
    PresenceResult,
    PublicationFrames,
    Published,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    namespace_of,
)

log = get_logger(__name__)

#: The chat room's channel name: ``#`` is outside the client alphabet, so no client can reach it.
CHAT_ROOM = "#chat"
CHAT_LEFT = b"A client has left the chat."

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Subscriber:
    """What the hub knows of one connection. Identity is the object itself."""

    id: str
    #: The connection's wire encoding; None for the plain-text chat endpoint.
    encoding: Encoding | None
    outbox: Outbox
    user: str | None = None
    #: Channels this connection is subscribed to; owned by the hub.
    channels: set[str] = field(default_factory=set)
    detached: bool = False
    #: ``time.monotonic()`` since which it has had no subscription; None while it has one.
    idle_since: float | None = field(default_factory=time.monotonic)

    def codec(self) -> Codec:
        assert self.encoding is not None
        return CODECS[self.encoding]


class Reply(Generic[T]):
    """A one-shot answer from the hub to a caller that waits for it (the HTTP API)."""

    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        assert self._value is not None
        return self._value


# --- commands -----------------------------------------------------------------------------------


@dataclass(slots=True)
class SubscribeCommand:
    subscriber: Subscriber
    request: Subscribe


@dataclass(slots=True)
class UnsubscribeCommand:
    subscriber: Subscriber
    request: Unsubscribe


@dataclass(slots=True)
class PublishCommand:
    """A publication from a client (``subscriber``) or from the HTTP API (``reply``)."""

    channel: str
    data: msgspec.Raw
    codec: Codec
    subscriber: Subscriber | None = None
    request_id: int | None = None
    #: Payloads already converted by the reader, by encoding.
    converted: dict[Encoding, msgspec.Raw] | None = None
    reply: Reply[Published | Error] | None = None


@dataclass(slots=True)
class HistoryCommand:
    subscriber: Subscriber
    request: History


@dataclass(slots=True)
class PresenceCommand:
    subscriber: Subscriber
    request: Presence


@dataclass(slots=True)
class DetachCommand:
    """The connection is gone: forget every subscription it had."""

    subscriber: Subscriber


@dataclass(slots=True)
class ChatJoinCommand:
    subscriber: Subscriber


@dataclass(slots=True)
class ChatSayCommand:
    subscriber: Subscriber
    text: str


@dataclass(slots=True)
class ChannelsQuery:
    reply: Reply[list[tuple[str, int]]]


Command = (
    SubscribeCommand
    | UnsubscribeCommand
    | PublishCommand
    | HistoryCommand
    | PresenceCommand
    | DetachCommand
    | ChatJoinCommand
    | ChatSayCommand
    | ChannelsQuery
)


# --- state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Retained:
    publication: PublicationFrames
    #: ``time.monotonic()`` after which it is evicted; ``math.inf`` when there is no TTL.
    expires: float


class ChannelState:
    """One channel: its subscribers grouped by encoding, its offset, epoch and history."""

    __slots__ = ("epoch", "history", "name", "offset", "options", "subscribers")

    def __init__(self, name: str, options: NamespaceSettings) -> None:
        self.name = name
        self.options = options
        # A fresh epoch whenever the channel's state is created: in memory, that is exactly when
        # earlier history (if any) was lost, so old offsets mean nothing any more.
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.subscribers: dict[Encoding | None, dict[Subscriber, None]] = {}
        self.history: deque[Retained] = deque()

    def __len__(self) -> int:
        return sum(len(group) for group in self.subscribers.values())

    def members(self) -> Iterator[Subscriber]:
        for group in self.subscribers.values():
            yield from group

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.setdefault(subscriber.encoding, {})[subscriber] = None

    def remove(self, subscriber: Subscriber) -> None:
        group = self.subscribers.get(subscriber.encoding)
        if group is not None:
            group.pop(subscriber, None)
            if not group:
                del self.subscribers[subscriber.encoding]

    def retain(self, publication: PublicationFrames, now: float) -> None:
        options = self.options
        if options.history_size == 0:
            return
        expires = now + options.history_ttl if options.history_ttl > 0 else math.inf
        self.history.append(Retained(publication, expires))
        while len(self.history) > options.history_size:
            self.history.popleft()

    def evict_expired(self, now: float) -> None:
        history = self.history
        while history and history[0].expires <= now:
            history.popleft()

    def retained_after(self, offset: int) -> list[PublicationFrames] | None:
        """Every publication after ``offset``, or None when some of them are no longer kept."""
        if offset == self.offset:
            return []
        if offset > self.offset:
            return None
        history = self.history
        if not history or history[0].publication.offset > offset + 1:
            return None
        first = offset + 1 - history[0].publication.offset
        return [history[i].publication for i in range(first, len(history))]


@dataclass(frozen=True, slots=True)
class HubStatistics:
    channels: int
    subscriptions: int
    mailbox_queued: int
    mailbox_size: int
    publications: int
    deliveries: int


class Hub:
    """The hub actor. Start it with ``await task_group.start(hub.run)``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._send: MemoryObjectSendStream[Command]
        self._receive: MemoryObjectReceiveStream[Command]
        self._send, self._receive = anyio.create_memory_object_stream[Command](
            settings.hub.mailbox_size
        )
        self._channels: dict[str, ChannelState] = {}
        self._publications = 0
        self._deliveries = 0
        self._running = False

    # --- the mailbox ----------------------------------------------------------------------------

    async def submit(self, command: Command) -> None:
        """Queue ``command`` for the hub, waiting while the mailbox is full."""
        await self._send.send(command)

    def submit_nowait(self, command: Command) -> None:
        """Queue ``command`` now; raises ``anyio.WouldBlock`` when the mailbox is full."""
        self._send.send_nowait(command)

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle commands until cancelled. Signals ``task_status`` once it takes commands."""
        self._running = True
        task_status.started()
        try:
            async with self._receive:
                async for command in self._receive:
                    try:
                        self._handle(command)
                    except Exception:
                        # One bad command must not take every channel down with it.
                        log.exception("hub.command_failed", command=type(command).__name__)
                        self._answer_internal_error(command)
        finally:
            self._running = False
            # Whoever still submits learns at once that the hub is gone (ClosedResourceError).
            self._send.close()

    def _handle(self, command: Command) -> None:
        match command:
            case PublishCommand():
                self._publish(command)
            case SubscribeCommand(subscriber=subscriber, request=request):
                self._subscribe(subscriber, request)
            case UnsubscribeCommand(subscriber=subscriber, request=request):
                self._unsubscribe(subscriber, request)
            case HistoryCommand(subscriber=subscriber, request=request):
                self._history(subscriber, request)
            case PresenceCommand(subscriber=subscriber, request=request):
                self._presence(subscriber, request)
            case DetachCommand(subscriber=subscriber):
                self._detach(subscriber)
            case ChatJoinCommand(subscriber=subscriber):
                self._chat_join(subscriber)
            case ChatSayCommand(subscriber=subscriber, text=text):
                self._chat_say(subscriber, text)
            case ChannelsQuery(reply=reply):
                reply.set(
                    [(name, len(state)) for name, state in self._channels.items() if len(state)]
                )

    def _answer_internal_error(self, command: Command) -> None:
        subscriber = getattr(command, "subscriber", None)
        request = getattr(command, "request", None)
        request_id = getattr(request, "id", getattr(command, "request_id", None))
        error = Error(id=request_id, code=ErrorCode.INTERNAL, message="internal error")
        reply = getattr(command, "reply", None)
        if isinstance(reply, Reply):
            reply.set(error)
        elif isinstance(subscriber, Subscriber) and subscriber.encoding is not None:
            self._reply(subscriber, error)

    # --- replies --------------------------------------------------------------------------------

    def _reply(self, subscriber: Subscriber, message: Message) -> None:
        if subscriber.detached or subscriber.encoding is None:
            return
        frame = Frame(subscriber.codec().encode(message))
        if not subscriber.outbox.offer(frame):
            self._drop_slow(subscriber)

    def _error(
        self, subscriber: Subscriber, request_id: int | None, code: ErrorCode, text: str
    ) -> None:
        self._reply(subscriber, Error(id=request_id, code=code, message=text))

    def _drop_slow(self, subscriber: Subscriber) -> None:
        # The outbox refused a frame: the connection's writer drops the client (and counts it);
        # the hub stops feeding it right away.
        self._detach(subscriber)

    # --- channels -------------------------------------------------------------------------------

    def _options(self, channel: str) -> NamespaceSettings:
        return self.settings.namespace(namespace_of(channel))

    def _state(self, channel: str) -> ChannelState:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState(channel, self._options(channel))
        return state

    def _forget_if_unused(self, state: ChannelState) -> None:
        # The identity check: a fan-out may already have forgotten this state (its last
        # subscriber was dropped as slow) and a new one may stand under the same name.
        if not len(state) and not state.history and self._channels.get(state.name) is state:
            del self._channels[state.name]

    def _subscribe(self, subscriber: Subscriber, request: Subscribe) -> None:
        if subscriber.detached:
            return
        channel = request.channel
        if channel in subscriber.channels:
            self._error(
                subscriber,
                request.id,
                ErrorCode.ALREADY_SUBSCRIBED,
                f"already subscribed to {channel!r}",
            )
            return
        if len(subscriber.channels) >= self.settings.limits.max_subscriptions:
            self._error(
                subscriber,
                request.id,
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {self.settings.limits.max_subscriptions} subscriptions per connection",
            )
            return
        state = self._state(channel)
        state.evict_expired(time.monotonic())
        recovered = False
        missed: list[PublicationFrames] = []
        since = request.since
        if since is not None and since.epoch == state.epoch:
            retained = state.retained_after(since.offset)
            if retained is not None:
                recovered, missed = True, retained
        assert subscriber.encoding is not None
        encoding = subscriber.encoding
        reply = Subscribed(
            id=request.id,
            channel=channel,
            epoch=state.epoch,
            offset=state.offset,
            recovered=recovered,
            publications=[publication.message(encoding) for publication in missed],
        )
        # The reply (with what was missed) is queued before the subscriber joins, and nothing
        # else runs in between: live messages follow with no gap and no duplicate.
        self._reply(subscriber, reply)
        if subscriber.detached:
            self._forget_if_unused(state)
            return
        if state.options.join_leave:
            self._broadcast_control(
                state, Join(channel=channel, client=subscriber.id, user=subscriber.user)
            )
        state.add(subscriber)
        subscriber.channels.add(channel)
        subscriber.idle_since = None

    def _unsubscribe(self, subscriber: Subscriber, request: Unsubscribe) -> None:
        channel = request.channel
        if channel not in subscriber.channels:
            self._error(
                subscriber, request.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel!r}"
            )
            return
        self._leave(subscriber, channel)
        self._reply(subscriber, Unsubscribed(id=request.id, channel=channel))

    def _leave(self, subscriber: Subscriber, channel: str) -> None:
        subscriber.channels.discard(channel)
        if not subscriber.channels:
            subscriber.idle_since = time.monotonic()
        state = self._channels.get(channel)
        if state is None:
            return
        state.remove(subscriber)
        if state.options.join_leave and channel != CHAT_ROOM:
            self._broadcast_control(
                state, Leave(channel=channel, client=subscriber.id, user=subscriber.user)
            )
        self._forget_if_unused(state)

    def _detach(self, subscriber: Subscriber) -> None:
        if subscriber.detached:
            return
        subscriber.detached = True
        subscriber.outbox.close()
        for channel in list(subscriber.channels):
            self._leave(subscriber, channel)
            if channel == CHAT_ROOM:
                self._chat_broadcast(Frame(CHAT_LEFT, CHAT_ROOM))

    def _broadcast_control(self, state: ChannelState, message: Message) -> None:
        """Send a non-publication message (``join``, ``leave``) to a channel's subscribers."""
        for encoding, group in list(state.subscribers.items()):
            if encoding is None or not group:
                continue
            frame = Frame(CODECS[encoding].encode(message))
            for subscriber in list(group):
                if not subscriber.outbox.offer(frame):
                    self._drop_slow(subscriber)

    # --- publications ---------------------------------------------------------------------------

    def _publish(self, command: PublishCommand) -> None:
        channel = command.channel
        subscriber = command.subscriber
        if subscriber is not None:
            if subscriber.detached:
                return
            if not self._options(channel).allow_publish:
                self._error(
                    subscriber,
                    command.request_id,
                    ErrorCode.PERMISSION_DENIED,
                    f"clients may not publish in namespace {namespace_of(channel)!r}",
                )
                return
        state = self._state(channel)
        state.offset += 1
        publication = PublicationFrames(
            channel=channel,
            offset=state.offset,
            epoch=state.epoch,
            publisher=None if subscriber is None else subscriber.id,
            data=command.data,
            source=command.codec,
        )
        if command.converted:
            for encoding, payload in command.converted.items():
                publication.add_payload(encoding, payload)
        now = time.monotonic()
        state.evict_expired(now)
        state.retain(publication, now)
        self._publications += 1
        self._fan_out(state, publication)
        published = Published(
            id=command.request_id or 0, channel=channel, offset=state.offset, epoch=state.epoch
        )
        if command.reply is not None:
            command.reply.set(published)
        elif subscriber is not None and command.request_id is not None:
            self._reply(subscriber, published)
        self._forget_if_unused(state)

    def _fan_out(self, state: ChannelState, publication: PublicationFrames) -> None:
        refused: list[Subscriber] = []
        delivered = 0
        for encoding, group in state.subscribers.items():
            if encoding is None:
                continue
            frame = publication.frame(encoding)
            for subscriber in group:
                if subscriber.outbox.offer(frame):
                    delivered += 1
                else:
                    refused.append(subscriber)
        self._deliveries += delivered
        for subscriber in refused:
            self._drop_slow(subscriber)

    # --- history and presence -------------------------------------------------------------------

    def _history(self, subscriber: Subscriber, request: History) -> None:
        channel = request.channel
        options = self._options(channel)
        if options.history_size == 0:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"history is not enabled in namespace {namespace_of(channel)!r}",
            )
            return
        state = self._state(channel)
        state.evict_expired(time.monotonic())
        retained = [item.publication for item in state.history]
        since = request.since
        if since is not None and since.epoch == state.epoch:
            retained = [p for p in retained if p.offset > since.offset]
            if request.limit is not None:
                retained = retained[: request.limit]
        elif request.limit is not None:
            # Without a position: the latest ``limit`` publications, oldest first.
            retained = retained[len(retained) - request.limit :] if request.limit else []
        assert subscriber.encoding is not None
        encoding = subscriber.encoding
        self._reply(
            subscriber,
            HistoryResult(
                id=request.id,
                channel=channel,
                epoch=state.epoch,
                offset=state.offset,
                publications=[publication.message(encoding) for publication in retained],
            ),
        )
        self._forget_if_unused(state)

    def _presence(self, subscriber: Subscriber, request: Presence) -> None:
        channel = request.channel
        if not self._options(channel).presence:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"presence is not enabled in namespace {namespace_of(channel)!r}",
            )
            return
        state = self._channels.get(channel)
        members = [] if state is None else list(state.members())
        self._reply(
            subscriber,
            PresenceResult(
                id=request.id,
                channel=channel,
                clients=[ClientInfo(client=m.id, user=m.user) for m in members],
            ),
        )

    # --- the chat room of /ws/chat --------------------------------------------------------------

    def _chat_join(self, subscriber: Subscriber) -> None:
        if subscriber.detached:
            return
        self._state(CHAT_ROOM).add(subscriber)
        subscriber.channels.add(CHAT_ROOM)

    def _chat_say(self, subscriber: Subscriber, text: str) -> None:
        if subscriber.detached:
            return
        self._chat_broadcast(Frame(f"Client says: {text}".encode(), CHAT_ROOM))

    def _chat_broadcast(self, frame: Frame) -> None:
        state = self._channels.get(CHAT_ROOM)
        if state is None:
            return
        group = state.subscribers.get(None, {})
        refused = [subscriber for subscriber in group if not subscriber.outbox.offer(frame)]
        self._deliveries += len(group) - len(refused)
        for subscriber in refused:
            self._drop_slow(subscriber)

    # --- observation ----------------------------------------------------------------------------

    def statistics(self) -> HubStatistics:
        stream = self._send.statistics()
        return HubStatistics(
            channels=len(self._channels),
            subscriptions=sum(len(state) for state in self._channels.values()),
            mailbox_queued=stream.current_buffer_used,
            mailbox_size=int(stream.max_buffer_size),
            publications=self._publications,
            deliveries=self._deliveries,
        )

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state)
