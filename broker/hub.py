"""The hub actor: one task per process owns every channel and subscriber of that process.

Everything that changes subscription state arrives as a command through one bounded mailbox
(``submit`` waits for room, which is how a flood pushes back on its reader) and is handled to
completion before the next, so no lock is needed. A command sent while the hub waits on an
empty mailbox is handled at once, on the sender's stack, in the hub's context (``_hand_over``):
it would have been the next one taken anyway, and waking the hub's task for it cost about a
tenth of the instructions of a publication to ten subscribers (docs/design.md, "The hub actor").

The hub never awaits a client: delivering is ``outbox.offer(frame)``, and a subscriber whose
outbox refuses a frame is detached at once (its writer then drops it with 4008). Each
publication is encoded at most once per encoding (``PublicationFrames``), and subscribers are
grouped by encoding, so the per-subscriber work of a fan-out is one ``offer``.

Offsets, epochs, history and presence belong to the backplane (``broker.backplane``); the hub
watches the channels its subscribers want and sequences what the backplane delivers. The hub's
jobs are mixins of ``Hub``, each in a module of its own:

* ``broker.hub_admission``: subscribing, admission at the channel's position, recovery
  (``subscribe`` with ``since``, docs/protocol.md §1), catching up with the channel's head;
* ``broker.hub_delivery``: where live delivery starts (the backplane's head), sequencing
  publications by offset, fan-out, and filling what was missed from history (or ``gap``);
* ``broker.hub_reads``: ``history`` and ``presence`` requests.

Reads run in tasks of the hub's task group and come back as commands.

The chat room of ``/ws/chat`` (docs/protocol.md §3) is in ``broker.hub_chat``: its frames are
text, under a name no client can use, and on Redis they reach the members on every process.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from broker.backplane.base import (
    Backplane,
    ChannelHead,
    LivePublication,
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
from broker.hub_delivery import Delivery
from broker.hub_reads import Reads
from broker.logs import get_logger
from broker.mailbox import Mailbox
from broker.monitor.instruments import Instruments
from broker.settings import NamespaceSettings, Settings
from broker.subscriber import Reply, Subscriber
from protocol import (
    CODECS,
    Error,
    ErrorCode,
    Frame,
    Leave,
    Message,
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


class Hub(Admission, Delivery, Reads, ChatRoom):
    """The hub actor. Start it with ``await task_group.start(hub.run)``. Subscribing (admission,
    recovery, catching up) is in ``broker.hub_admission``, sequencing and fan-out in
    ``broker.hub_delivery``, history and presence reads in ``broker.hub_reads``."""

    def __init__(self, settings: Settings, backplane: Backplane) -> None:
        self.settings = settings
        self.backplane = backplane
        self._mailbox: Mailbox[Command] = Mailbox(settings.hub.mailbox_size)
        self._channels: dict[str, ChannelState] = {}
        self._tasks: TaskGroup | None = None
        self._publications = 0
        self._deliveries = 0
        self._gaps = 0
        #: Histograms and counters for metrics, fed here and by the connections.
        self.instruments = Instruments()
        self._running = False
        #: The hub task's context while it runs, for commands handled on their sender's stack
        #: (``_hand_over``), and whether one is being handled so.
        self._context: contextvars.Context | None = None
        self._handing_over = False
        #: Subscribers waiting to be detached, and whether a detach is under way: detaching one
        #: broadcasts its departure, which may find more departed subscribers, so detaching is a
        #: loop over this queue rather than a recursion as deep as the room is large.
        self._detach_queue: deque[Subscriber] = deque()
        self._detaching = False

    # --- the mailbox ----------------------------------------------------------------------------

    async def submit(self, command: Command) -> None:
        """Queue ``command`` for the hub, waiting only while the mailbox is full."""
        # Handled now if the hub is idle (``_hand_over``), else queued without the yield of a
        # plain send() while there is room: a burst that finds the hub busy is handled in one
        # turn. Either way a subscriber gets at most one direct write per turn and the rest of
        # the turn in one batch (``Outbox.offer``, ``FlushScheduler``). Order is kept: while
        # senders wait, the buffer stays full, so a newcomer waits too.
        if not (self._hand_over(command) or self._mailbox.offer(command)):
            await self._mailbox.send(command)

    def submit_nowait(self, command: Command) -> None:
        """Queue ``command`` now; raises ``anyio.WouldBlock`` when the mailbox is full."""
        if not self._hand_over(command):
            self._mailbox.send_nowait(command)

    def _hand_over(self, command: Command, handle: Callable[[Any], None] | None = None) -> bool:
        """Handle ``command`` now if the hub is idle: its task waits on an empty mailbox, so this
        command would be the next it takes. It runs to completion here, on the sender's stack
        and in the hub's context (its logs are the hub's, not the sender's connection's), as
        it would in the hub's task, which stays asleep. Not from inside a command being handled
        this way (one sent by the hub to itself is queued and handled after it): False then,
        and when the hub is busy, not running, or has commands queued. ``handle``: the
        command's own handler, when the caller knows its kind (``_handle_safely`` otherwise)."""
        context = self._context
        if context is None or self._handing_over or not self._mailbox.waiting():
            return False
        self._handing_over = True
        try:
            context.run(handle or self._handle_safely, command)
        finally:
            self._handing_over = False
        return True

    def offer(self, command: Command) -> bool:
        """``submit`` if it needs no wait: handled now (``_hand_over``) or queued when the
        mailbox has room and nobody waits for it; whether it was."""
        return self._hand_over(command) or self._mailbox.offer(command)

    def offer_live(self, command: LivePublication) -> bool:
        """``offer`` for a publication: the memory backplane's ``deliver_now``
        (``Backplane.publish_now``), once per publication, handed to ``_live`` without the
        dispatch of ``_handle``."""
        return self._hand_over(command, self._live_safely) or self._mailbox.offer(command)

    def _live_safely(self, command: LivePublication) -> None:
        try:
            self._live(command.publication)
        except Exception:
            log.exception("hub.command_failed", command="LivePublication")
            self._answer_internal_error(command)

    def detach_unsubscribed(self, subscriber: Subscriber) -> bool:
        """Detach ``subscriber`` now, without the mailbox, when it holds no channel: then
        detaching is marking it and closing its outbox (``_detach_one``), and a command still
        queued for it finds it detached, as it would behind a ``DetachCommand``. False when it
        holds a channel: it must go through the mailbox. A connection that never subscribed
        (most of those opened and closed at a high rate) spares the hub a turn."""
        if subscriber.channels:
            return False
        subscriber.detached = True
        subscriber.outbox.close()
        return True

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Handle commands until cancelled. Signals ``task_status`` once it takes commands."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                self._running = True
                self._context = contextvars.copy_context()
                task_status.started()
                receive = self._mailbox
                while True:
                    command: Command | None = await receive.receive()
                    # Then everything else already queued, in the same turn of the loop.
                    while command is not None:
                        self._handle_safely(command)
                        command = receive.poll()
        except anyio.EndOfStream:
            pass
        finally:
            self._running = False
            self._context = None
            self._tasks = None
            # Whoever still submits learns at once that the hub is gone (ClosedResourceError).
            self._mailbox.close()

    def _handle_safely(self, command: Command) -> None:
        try:
            self._handle(command)
        except Exception:
            # One bad command must not take every channel down with it.
            log.exception("hub.command_failed", command=type(command).__name__)
            self._answer_internal_error(command)

    def _handle(self, command: Command) -> None:
        if type(command) is LivePublication:
            # The command of every publication, ahead of the ``match`` below: a class pattern
            # costs about 900 instructions (``isinstance`` and the keyword's attribute).
            self._live(command.publication)
            return
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
        members += list(state.recovering or ()) + [s for s, _ in state.waiting_on()]
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
        pending = [r for s, r in state.waiting_on() if s is subscriber]
        recovery = state.recovering.get(subscriber) if state.recovering else None
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

    # --- observation ----------------------------------------------------------------------------

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            channels=len(self._channels),
            subscriptions=sum(len(state) for state in self._channels.values()),
            mailbox_queued=len(self._mailbox),
            mailbox_size=self._mailbox.size,
            publications=self._publications,
            deliveries=self._deliveries,
            gaps=self._gaps,
        )

    def subscriber_count(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state)
