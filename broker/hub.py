"""The hub actor: one task per process owns every channel and subscriber of that process.

Everything that changes subscription state arrives as a command through one bounded mailbox
(``submit`` waits for room, which is how a flood pushes back on its reader) and is handled to
completion before the next, so no lock is needed. The hub never awaits a client: delivering is
``outbox.offer(frame)``, and a subscriber whose outbox refuses a frame is detached at once (its
writer then drops it with 4008). Each publication is encoded at most once per encoding
(``PublicationFrames``), and subscribers are grouped by encoding, so the per-subscriber work of a
fan-out is one ``offer``.

Offsets, epochs, history and presence belong to the backplane (``broker.backplane``); the hub
watches the channels its subscribers want and sequences what the backplane delivers. Per channel
it keeps the offset it delivered last, and:

* a publication at the next offset is fanned out; one at or below it is a duplicate, dropped;
* one further ahead means some were missed (a Redis outage, a lost pub/sub message): the hub
  holds it back, reads the missing range from the backplane's history, delivers it in order, and
  tells subscribers of what could not be found with ``gap``;
* a new epoch means the stream was lost and started again: the hub follows the new stream.

Recovery (``subscribe`` with ``since``, docs/protocol.md §1) reads the missed publications in a task
while the subscriber's live publications are held in a buffer of its own; the reply carries the
missed ones up to the offset where the buffer starts, so live messages follow with no gap and no
duplicate. A ``since`` this process has not reached is checked against the channel's head, which
the process first catches up with. Subscribing, admission and recovery are in
``broker.hub_admission`` (a mixin of ``Hub``). Reads run in tasks of the hub's task group and come
back as commands.

The chat room of ``/ws/chat`` (docs/protocol.md §3) is in ``broker.hub_chat``: its frames are
text, under a name no client can use, and on Redis they reach the members on every process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.backplane.base import (
    Backplane,
    BackplaneUnavailable,
    ChannelHead,
    Head,
    LivePublication,
    Page,
    RemoteAnnouncement,
    RoomFrame,
)
from broker.channel_state import ChannelState
from broker.commands import (
    ChannelsQuery,
    ChatJoinCommand,
    ChatSayCommand,
    Command,
    DetachCommand,
    FilledCommand,
    HeadReadCommand,
    HistoryCommand,
    PresenceCommand,
    RecoveredCommand,
    SubscribeCommand,
    UnsubscribeCommand,
    UnsubscribeUserCommand,
)
from broker.hub_admission import Admission
from broker.hub_chat import CHAT_LEFT, CHAT_ROOM, ChatRoom
from broker.logs import get_logger
from broker.monitor.instruments import Instruments
from broker.settings import NamespaceSettings, Settings
from broker.subscriber import Reply, Subscriber
from protocol import (
    CODECS,
    Encoding,
    Error,
    ErrorCode,
    Frame,
    Gap,
    History,
    HistoryResult,
    Leave,
    Message,
    Presence,
    PresenceResult,
    PublicationFrames,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    namespace_of,
)

log = get_logger(__name__)


# Re-exported: the hub's public vocabulary, so that callers import it from one place.
__all__ = [
    "CHAT_LEFT",
    "CHAT_ROOM",
    "ChannelState",
    "ChannelsQuery",
    "ChatJoinCommand",
    "ChatSayCommand",
    "Command",
    "DetachCommand",
    "FilledCommand",
    "HistoryCommand",
    "Hub",
    "HubStatistics",
    "PresenceCommand",
    "RecoveredCommand",
    "Reply",
    "SubscribeCommand",
    "Subscriber",
    "UnsubscribeCommand",
]


@dataclass(frozen=True, slots=True)
class HubStatistics:
    channels: int
    subscriptions: int
    mailbox_queued: int
    mailbox_size: int
    publications: int
    deliveries: int
    gaps: int


class Hub(Admission, ChatRoom):
    """The hub actor. Start it with ``await task_group.start(hub.run)``. Subscribing (admission,
    recovery, catching up) is in ``broker.hub_admission``."""

    def __init__(self, settings: Settings, backplane: Backplane) -> None:
        self.settings = settings
        self.backplane = backplane
        self._send: MemoryObjectSendStream[Command]
        self._receive: MemoryObjectReceiveStream[Command]
        self._send, self._receive = anyio.create_memory_object_stream[Command](
            settings.hub.mailbox_size
        )
        self._channels: dict[str, ChannelState] = {}
        self._tasks: TaskGroup | None = None
        self._publications = 0
        self._deliveries = 0
        self._gaps = 0
        #: Histograms and counters for metrics, fed here and by the connections.
        self.instruments = Instruments()
        self._running = False
        #: Subscribers waiting to be detached, and whether a detach is under way: detaching one
        #: broadcasts its departure, which may find more departed subscribers, so detaching is a
        #: loop over this queue rather than a recursion as deep as the room is large.
        self._detach_queue: deque[Subscriber] = deque()
        self._detaching = False

    # --- the mailbox ----------------------------------------------------------------------------

    async def submit(self, command: Command) -> None:
        """Queue ``command`` for the hub, waiting only while the mailbox is full."""
        # Without the yield of a plain send(): a reader handling a burst queues it all, and the
        # hub then handles it in one turn, so the writers wake once for the lot (batch frames).
        # Order is kept: while senders wait, the buffer stays full, so a newcomer waits too.
        try:
            self._send.send_nowait(command)
        except anyio.WouldBlock:
            await self._send.send(command)

    def submit_nowait(self, command: Command) -> None:
        """Queue ``command`` now; raises ``anyio.WouldBlock`` when the mailbox is full."""
        self._send.send_nowait(command)

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle commands until cancelled. Signals ``task_status`` once it takes commands."""
        try:
            async with anyio.create_task_group() as tasks, self._receive:
                self._tasks = tasks
                self._running = True
                task_status.started()
                receive = self._receive
                while True:
                    command = await receive.receive()
                    # Then everything else already queued, in the same turn of the loop.
                    while True:
                        self._handle_safely(command)
                        try:
                            command = receive.receive_nowait()
                        except anyio.WouldBlock:
                            break
        except anyio.EndOfStream:
            pass
        finally:
            self._running = False
            self._tasks = None
            # Whoever still submits learns at once that the hub is gone (ClosedResourceError).
            self._send.close()

    def _handle_safely(self, command: Command) -> None:
        try:
            self._handle(command)
        except Exception:
            # One bad command must not take every channel down with it.
            log.exception("hub.command_failed", command=type(command).__name__)
            self._answer_internal_error(command)

    def _handle(self, command: Command) -> None:
        match command:
            case LivePublication(publication=publication):
                self._live(publication)
            case SubscribeCommand(subscriber=subscriber, request=request):
                self._subscribe(subscriber, request)
            case UnsubscribeCommand(subscriber=subscriber, request=request):
                self._unsubscribe(subscriber, request)
            case RecoveredCommand():
                self._recovered(command)
            case FilledCommand():
                self._filled(command)
            case HeadReadCommand():
                self._head_read(command)
            case ChannelHead(channel=channel, head=head):
                self._head(channel, head)
            case RemoteAnnouncement(channel=channel, message=message):
                state = self._channels.get(channel)
                if state is not None:
                    self._broadcast_control(state, message)
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
            case RoomFrame(room=room, payload=payload):
                if room == CHAT_ROOM:
                    self._chat_broadcast(Frame(payload, CHAT_ROOM))
            case UnsubscribeUserCommand(user=user, channel=channel, reply=reply):
                reply.set(self._unsubscribe_user(user, channel))
            case ChannelsQuery(reply=reply):
                reply.set(
                    [(name, len(state)) for name, state in self._channels.items() if len(state)]
                )

    def _answer_internal_error(self, command: Command) -> None:
        subscriber = getattr(command, "subscriber", None)
        request = getattr(command, "request", None)
        request_id = getattr(request, "id", None)
        error = Error(id=request_id, code=ErrorCode.INTERNAL, message="internal error")
        if isinstance(subscriber, Subscriber) and subscriber.encoding is not None:
            self._reply(subscriber, error)

    def _spawn(self, task: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        assert self._tasks is not None, "the hub is not running"
        self._tasks.start_soon(self._guarded, task, args)

    async def _guarded(
        self, task: Callable[..., Coroutine[Any, Any, None]], args: tuple[Any, ...]
    ) -> None:
        """Run a read task; a failure is logged and must not end the hub's task group."""
        try:
            await task(*args)
        except Exception:
            log.exception("hub.task_failed", task=task.__name__)

    # --- replies --------------------------------------------------------------------------------

    def _reply(self, subscriber: Subscriber, message: Message) -> None:
        if subscriber.detached or subscriber.encoding is None:
            return
        if not subscriber.outbox.offer(Frame(subscriber.codec().encode(message))):
            self._detach(subscriber)

    def _error(
        self, subscriber: Subscriber, request_id: int | None, code: ErrorCode, text: str
    ) -> None:
        self._reply(subscriber, Error(id=request_id, code=code, message=text))

    def _options(self, channel: str) -> NamespaceSettings:
        return self.settings.namespace(namespace_of(channel))

    def _unsubscribe(self, subscriber: Subscriber, request: Unsubscribe) -> None:
        channel = request.channel
        if channel not in subscriber.channels:
            self._error(
                subscriber, request.id, ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel!r}"
            )
            return
        self._leave(subscriber, channel)
        self._reply(subscriber, Unsubscribed(id=request.id, channel=channel))

    def _unsubscribe_user(self, user: str, channel: str) -> int:
        """Unsubscribe every connection of ``user`` from ``channel``; how many there were."""
        state = self._channels.get(channel)
        if state is None or channel == CHAT_ROOM:
            return 0
        members = [s for group in state.live.values() for s in group]
        members += list(state.recovering) + [s for s, _ in state.joining + state.waiting]
        targets = {s: None for s in members if s.user == user and not s.detached}
        for subscriber in targets:
            self._leave(subscriber, channel)
            # ``id`` 0: no request of the client's asked for it (the Python client's ids start
            # at 1).
            self._reply(subscriber, Unsubscribed(id=0, channel=channel))
        return len(targets)

    def _leave(self, subscriber: Subscriber, channel: str) -> None:
        subscriber.channels.discard(channel)
        if not subscriber.channels:
            subscriber.idle_since = time.monotonic()
        state = self._channels.get(channel)
        if state is None:
            return
        was_live = subscriber in state.live.get(subscriber.encoding, {})
        pending = [r for s, r in state.joining + state.waiting if s is subscriber]
        recovery = state.recovering.get(subscriber)
        if recovery is not None:
            pending.append(recovery.request)
        for request in pending:
            # Every subscribe is answered (docs/protocol.md §1), even one overtaken by its undoing.
            self._reply(
                subscriber,
                Subscribed(id=request.id, channel=channel, epoch=state.epoch, offset=state.offset),
            )
        state.remove(subscriber)
        if was_live and channel != CHAT_ROOM:
            options = state.options
            if options.presence:
                self.backplane.presence_remove(channel, subscriber.info())
            if options.join_leave:
                leave = Leave(channel=channel, client=subscriber.id, user=subscriber.user)
                self._broadcast_control(state, leave)
                self.backplane.announce(channel, leave)
        if not len(state):
            del self._channels[channel]
            if channel != CHAT_ROOM:
                self.backplane.unwatch(channel)

    def _detach(self, subscriber: Subscriber) -> None:
        self._detach_queue.append(subscriber)
        if self._detaching:
            return  # The loop below, further up the stack, takes it.
        self._detaching = True
        try:
            while self._detach_queue:
                self._detach_one(self._detach_queue.popleft())
        finally:
            self._detaching = False

    def _detach_one(self, subscriber: Subscriber) -> None:
        if subscriber.detached:
            return
        subscriber.detached = True
        subscriber.outbox.close()
        for channel in list(subscriber.channels):
            self._leave(subscriber, channel)
            if channel == CHAT_ROOM:
                self._chat_said(CHAT_LEFT)

    def _broadcast_control(self, state: ChannelState, message: Message) -> None:
        """Send a message that is not a publication (``join``, ``leave``, ``gap``) to a
        channel's live subscribers, encoded once per encoding."""
        for encoding, group in list(state.live.items()):
            if encoding is None or not group:
                continue
            frame = Frame(CODECS[encoding].encode(message))
            for subscriber in list(group):
                if not subscriber.outbox.offer(frame):
                    self._detach(subscriber)

    # --- publications: sequencing and fan-out ---------------------------------------------------

    def _live(self, publication: PublicationFrames) -> None:
        state = self._channels.get(publication.channel)
        if state is None:
            return  # Nobody here wants it any more.
        if not state.watching or state.filling:
            state.pending.append(publication)
            return
        self._sequence(state, publication)

    def _sequence(self, state: ChannelState, publication: PublicationFrames) -> None:
        if publication.epoch != state.epoch:
            # The stream was lost and started again: follow the new one from its start, reading
            # what it already holds. Subscribers see the new epoch on the messages themselves and
            # know that old positions mean nothing now.
            state.epoch, state.offset = publication.epoch, 0
        offset = publication.offset
        if offset <= state.offset:
            return  # Already delivered.
        if offset > state.offset + 1:
            state.filling = True
            state.pending.append(publication)
            self._spawn(
                self._read_range, state.name, state.epoch, state.offset, offset - 1, state.options
            )
            return
        state.offset = offset
        self._fan_out(state, publication)

    def _fan_out(self, state: ChannelState, publication: PublicationFrames) -> None:
        self._publications += 1
        refused: list[Subscriber] = []
        delivered = 0
        for encoding, group in state.live.items():
            if encoding is None:
                continue
            try:
                frame = publication.frame(encoding)
            except (ValueError, TypeError, OverflowError):
                # A payload this encoding cannot carry (published through another broker
                # version): these subscribers are told they skip it, not left guessing.
                self._gap_to(group, encoding, state.name, publication.offset, publication.offset)
                continue
            for subscriber in group:
                if subscriber.outbox.offer(frame):
                    delivered += 1
                else:
                    refused.append(subscriber)
        if state.recovering:
            cap = self.settings.queue.max_messages
            for subscriber, recovery in state.recovering.items():
                recovery.held.append(publication)
                if len(recovery.held) > cap:
                    refused.append(subscriber)
        self._deliveries += delivered
        for subscriber in refused:
            # Its writer drops the client (4008); the hub stops feeding it right away.
            subscriber.outbox.overflow()
            self._detach(subscriber)

    async def _read_range(
        self, channel: str, epoch: str, after: int, upto: int, options: NamespaceSettings
    ) -> None:
        page: Page | None = None
        try:
            page = await self.backplane.read(channel, after, upto - after, options)
        except BackplaneUnavailable:
            pass
        except Exception:
            log.exception("hub.fill_read_failed", channel=channel)
        # Always answered: what could not be read is reported to subscribers as a ``gap``.
        await self.submit(FilledCommand(channel, epoch, upto, page))

    def _filled(self, command: FilledCommand) -> None:
        state = self._channels.get(command.channel)
        if state is None:
            return
        if command.epoch != state.epoch:
            # The stream was replaced while this range was read: its numbers mean nothing now.
            state.filling = False
            self._resequence(state)
            return
        page = command.page
        found = []
        if page is not None and page.head.epoch == state.epoch:
            found = [p for p in page.publications if state.offset < p.offset <= command.upto]
        self.instruments.fills += 1
        self.instruments.filled_publications += len(found)
        for publication in found:
            if publication.offset > state.offset + 1:
                self._gap(state, state.offset + 1, publication.offset - 1)
            state.offset = publication.offset
            self._fan_out(state, publication)
        if state.offset < command.upto:
            self._gap(state, state.offset + 1, command.upto)
            state.offset = command.upto
        state.filling = False
        self._resequence(state)
        if state.waiting:
            self._release_waiting(state)

    def _resequence(self, state: ChannelState) -> None:
        """Sequence the publications held back while a range was read."""
        pending, state.pending = state.pending, []
        for publication in pending:
            if state.filling:
                state.pending.append(publication)
            else:
                self._sequence(state, publication)

    def _gap_to(
        self,
        group: dict[Subscriber, None],
        encoding: Encoding,
        channel: str,
        first: int,
        last: int,
    ) -> None:
        self._gaps += 1
        self.instruments.gap_messages += len(group)
        frame = Frame(
            CODECS[encoding].encode(Gap(channel=channel, from_offset=first, to_offset=last))
        )
        for subscriber in list(group):
            if not subscriber.outbox.offer(frame):
                subscriber.outbox.overflow()

    def _gap(self, state: ChannelState, first: int, last: int) -> None:
        """Publications ``first`` to ``last`` are lost to this process: say so."""
        self._gaps += 1
        self.instruments.gap_messages += sum(
            len(group) for encoding, group in state.live.items() if encoding is not None
        )
        log.warning("hub.gap", channel=state.name, from_offset=first, to_offset=last)
        self._broadcast_control(state, Gap(channel=state.name, from_offset=first, to_offset=last))

    def _head(self, channel: str, head: Head) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        if not state.watching:
            self._start(state, head)
            joining, state.joining = state.joining, []
            for subscriber, request in joining:
                if not subscriber.detached and channel in subscriber.channels:
                    self._admit(state, subscriber, request)
            pending, state.pending = state.pending, []
            for publication in pending:
                self._live(publication)
            return
        # Live delivery was re-established (after an outage): catch up on what was missed,
        # from the start of the stream when it is a new one.
        self._catch_up(state, head)

    # --- history and presence -------------------------------------------------------------------

    def _history(self, subscriber: Subscriber, request: History) -> None:
        options = self._options(request.channel)
        if options.history_size == 0:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"history is not enabled in namespace {namespace_of(request.channel)!r}",
            )
            return
        self._spawn(self._read_history, subscriber, request, options)

    async def _read_history(
        self, subscriber: Subscriber, request: History, options: NamespaceSettings
    ) -> None:
        since = request.since
        channel, limit = request.channel, request.limit
        try:
            # With a position in the current stream: what came after it, oldest first.
            # Otherwise (none, or one from a lost stream): the latest ``limit``.
            page = None
            if since is not None:
                page = await self.backplane.read(channel, since.offset, limit, options)
                if page.head.epoch != since.epoch:
                    page = None
            if page is None:
                page = await self.backplane.latest(channel, limit, options)
        except BackplaneUnavailable:
            self._error(subscriber, request.id, ErrorCode.UNAVAILABLE, "history is unavailable")
            return
        assert subscriber.encoding is not None
        encoding = subscriber.encoding
        try:
            publications = [p.message(encoding) for p in page.publications]
        except (ValueError, TypeError, OverflowError):
            self._error(
                subscriber,
                request.id,
                ErrorCode.INTERNAL,
                "a retained publication cannot be sent in this connection's encoding",
            )
            return
        self._reply(
            subscriber,
            HistoryResult(
                id=request.id,
                channel=request.channel,
                epoch=page.head.epoch,
                offset=page.head.offset,
                publications=publications,
            ),
        )

    def _presence(self, subscriber: Subscriber, request: Presence) -> None:
        if not self._options(request.channel).presence:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"presence is not enabled in namespace {namespace_of(request.channel)!r}",
            )
            return
        self._spawn(self._read_presence, subscriber, request)

    async def _read_presence(self, subscriber: Subscriber, request: Presence) -> None:
        try:
            members = await self.backplane.presence(request.channel)
        except BackplaneUnavailable:
            self._error(subscriber, request.id, ErrorCode.UNAVAILABLE, "presence is unavailable")
            return
        self._reply(
            subscriber, PresenceResult(id=request.id, channel=request.channel, clients=members)
        )

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
            gaps=self._gaps,
        )

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state)
