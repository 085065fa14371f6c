"""Subscribing: admission, recovery, and catching up with the channel (part of the hub).

``Admission`` is a mixin of ``broker.hub.Hub``; its methods run inside hub commands like the
rest of the hub, under the same rules (never await a client or the backplane; reads run in the
hub's tasks and come back as commands).

A subscribe is admitted at the channel's position as this process knows it:

* without ``since``, or with the process's own position: answered at once, then live;
* with an older position of the same epoch: the missed publications are read while the
  subscriber's live ones are held for it (``Recovery``); the reply carries the missed ones up to
  where the held ones start, so live messages follow with no gap and no duplicate;
* with a position the process has not reached, or of another epoch: the question is about the
  channel, not the process, which may be behind (a lost pub/sub message not filled yet). The
  subscribe waits while the channel's head is read from the backplane and the process catches up
  with it (delivering what it missed to its own subscribers too), then is admitted again, once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from broker.backplane.base import Backplane, BackplaneUnavailable, Head, Page
from broker.channel_state import ChannelState
from broker.commands import Command, HeadReadCommand, RecoveredCommand
from broker.logs import get_logger
from broker.settings import NamespaceSettings, Settings
from broker.subscriber import Subscriber
from protocol import (
    ErrorCode,
    Join,
    Message,
    Publication,
    PublicationFrames,
    Subscribe,
    Subscribed,
)

log = get_logger("broker.hub")


class Admission:
    """The hub's subscribing half. See the module docstring."""

    if TYPE_CHECKING:
        settings: Settings
        backplane: Backplane
        _channels: dict[str, ChannelState]

        async def submit(self, command: Command) -> None: ...
        def _spawn(self, task: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None: ...
        def _reply(self, subscriber: Subscriber, message: Message) -> None: ...
        def _error(
            self, subscriber: Subscriber, request_id: int | None, code: ErrorCode, text: str
        ) -> None: ...
        def _options(self, channel: str) -> NamespaceSettings: ...
        def _detach(self, subscriber: Subscriber) -> None: ...
        def _broadcast_control(self, state: ChannelState, message: Message) -> None: ...
        async def _read_range(
            self, channel: str, epoch: str, after: int, upto: int, options: NamespaceSettings
        ) -> None: ...

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
        limit = self.settings.limits.max_subscriptions
        if len(subscriber.channels) >= limit:
            self._error(
                subscriber,
                request.id,
                ErrorCode.LIMIT_EXCEEDED,
                f"at most {limit} subscriptions per connection",
            )
            return
        state = self._watch(channel)
        subscriber.channels.add(channel)
        subscriber.idle_since = None
        if state.watching:
            self._admit(state, subscriber, request)
        else:
            state.join(subscriber, request)

    def _watch(self, channel: str) -> ChannelState:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState(channel, self._options(channel))
            head = self.backplane.watch(channel)
            if head is not None:
                self._start(state, head)
        return state

    def _start(self, state: ChannelState, head: Head) -> None:
        state.watching = True
        state.epoch, state.offset = head.epoch, head.offset

    def _admit(
        self,
        state: ChannelState,
        subscriber: Subscriber,
        request: Subscribe,
        *,
        checked: bool = False,
    ) -> None:
        """Answer ``request`` at the channel's current position, or start its recovery.

        A ``since`` this process has not reached, or of another epoch, is about the channel, not
        about what this process delivered: the process may be behind (its pub/sub link lost
        messages it has not read back yet). Such a subscribe waits while the channel's head is
        read and the process catches up with it, then is admitted again (``checked``)."""
        since = request.since
        if (
            since is not None
            and not checked
            and (since.epoch != state.epoch or since.offset > state.offset)
        ):
            state.wait(subscriber, request)
            if not state.checking:
                state.checking = True
                self._spawn(self._read_head, state.name, state.options)
            return
        if since is not None and since.epoch == state.epoch and since.offset < state.offset:
            state.recover(subscriber, request)
            self._spawn(self._read_missed, subscriber, request, state.offset, state.options)
            return
        recovered = (
            since is not None and since.epoch == state.epoch and since.offset == state.offset
        )
        self._reply(
            subscriber,
            Subscribed(
                id=request.id,
                channel=state.name,
                epoch=state.epoch,
                offset=state.offset,
                recovered=recovered,
            ),
        )
        self._go_live(state, subscriber)

    async def _read_head(self, channel: str, options: NamespaceSettings) -> None:
        head: Head | None = None
        try:
            head = (await self.backplane.latest(channel, 0, options)).head
        except BackplaneUnavailable:
            pass
        except Exception:
            log.exception("hub.head_read_failed", channel=channel)
        # Always answered: without a head, the waiting subscribes are answered as they stand.
        await self.submit(HeadReadCommand(channel, head))

    def _head_read(self, command: HeadReadCommand) -> None:
        state = self._channels.get(command.channel)
        if state is None:
            return
        state.checking = False
        if command.head is not None:
            self._catch_up(state, command.head)
        self._release_waiting(state)

    def _catch_up(self, state: ChannelState, head: Head) -> None:
        """Deliver what this process missed up to ``head``: from the start of the stream when it
        is a new one. The waiting subscribes are admitted once it has."""
        if head.epoch != state.epoch:
            state.epoch, state.offset = head.epoch, 0
        if head.offset > state.offset:
            state.target = head
            if not state.filling:
                state.filling = True
                self._spawn(
                    self._read_range,
                    state.name,
                    state.epoch,
                    state.offset,
                    head.offset,
                    state.options,
                )

    def _release_waiting(self, state: ChannelState) -> None:
        """Admit the subscribes waiting for this process to catch up, once it has (or cannot)."""
        if state.checking or state.filling:
            return
        target = state.target
        if target is not None and target.epoch == state.epoch and target.offset > state.offset:
            # A fill ended short of the head (the head moved on meanwhile): read the rest.
            self._catch_up(state, target)
            return
        state.target = None
        waiting, state.waiting = state.waiting, None
        for subscriber, request in waiting or ():
            if not subscriber.detached and state.name in subscriber.channels:
                self._admit(state, subscriber, request, checked=True)

    async def _read_missed(
        self, subscriber: Subscriber, request: Subscribe, upto: int, options: NamespaceSettings
    ) -> None:
        assert request.since is not None
        page: Page | None = None
        try:
            page = await self.backplane.read(
                request.channel, request.since.offset, upto - request.since.offset, options
            )
        except BackplaneUnavailable:
            pass
        except Exception:
            log.exception("hub.recovery_read_failed", channel=request.channel)
        # Always answered: without a page, the reply says ``recovered: false``.
        await self.submit(RecoveredCommand(subscriber, request, upto, page))

    def _recovered(self, command: RecoveredCommand) -> None:
        subscriber, request, upto = command.subscriber, command.request, command.upto
        state = self._channels.get(request.channel)
        if state is None or not state.recovering or subscriber not in state.recovering:
            return  # It left (or was dropped) while the read was in flight.
        held = state.recovering.pop(subscriber).held
        if not state.recovering:
            state.recovering = None
        since = request.since
        assert since is not None and subscriber.encoding is not None
        missed: list[PublicationFrames] = []
        page = command.page
        if page is not None and page.head.epoch == since.epoch:
            missed = [p for p in page.publications if since.offset < p.offset <= upto]
        # Recovered only when every publication from ``since`` to ``upto`` is there: a client
        # must never be fed a partial set (docs/protocol.md §1).
        recovered = [p.offset for p in missed] == list(range(since.offset + 1, upto + 1))
        encoding = subscriber.encoding
        publications: list[Publication] = []
        if recovered:
            try:
                publications = [p.message(encoding) for p in missed]
            except (ValueError, TypeError, OverflowError):
                # A payload this encoding cannot carry (stored by another broker version):
                # the set would be partial, so nothing is recovered.
                recovered = False
        self._reply(
            subscriber,
            Subscribed(
                id=request.id,
                channel=state.name,
                epoch=since.epoch if recovered else state.epoch,
                offset=upto,
                recovered=recovered,
                publications=publications,
            ),
        )
        for publication in held:
            if subscriber.detached:
                return
            if not subscriber.outbox.offer(publication.frame(encoding)):
                self._detach(subscriber)
                return
        self._go_live(state, subscriber)

    def _go_live(self, state: ChannelState, subscriber: Subscriber) -> None:
        if subscriber.detached:
            return
        options = state.options
        if options.presence:
            # Before the join: whoever sees the join finds the member in presence.
            self.backplane.presence_add(state.name, subscriber.info())
        if options.join_leave:
            join = Join(channel=state.name, client=subscriber.id, user=subscriber.user)
            self._broadcast_control(state, join)
            self.backplane.announce(state.name, join)
        state.add(subscriber)
