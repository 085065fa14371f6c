"""Publications: sequencing, fan-out and filling what was missed (part of the hub).

``Delivery`` is a mixin of ``broker.hub.Hub``; its methods run inside hub commands like the rest
of the hub. Per channel the hub keeps the offset it delivered last (``ChannelState.offset``), and:

* a publication at the next offset is fanned out; one at or below it is a duplicate, dropped;
* one further ahead means some were missed (a Redis outage, a lost pub/sub message): the hub
  holds it back (``pending``), reads the missing range from the backplane's history, delivers it
  in order, and tells subscribers of what could not be found with ``gap``;
* a new epoch means the stream was lost and started again: the hub follows the new stream.

Where live delivery starts is the head the backplane reports once the channel is watched
(``ChannelHead``): on Redis, read after the pub/sub subscription is in place, so a publication
made before it is counted in the head and one made after it arrives live. Publications that
arrive before the head are held in ``pending`` and sequenced against it (those it already counts
are dropped), and the subscribes that waited for it are answered at the head first: each
subscriber gets every publication after its reply's offset exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from broker.backplane.base import Backplane, BackplaneUnavailable, Head, Page
from broker.channel_state import ChannelState
from broker.commands import Command, FilledCommand
from broker.logs import get_logger
from broker.settings import NamespaceSettings, Settings
from broker.subscriber import Subscriber
from protocol import CODECS, Encoding, Frame, Gap, Message, PublicationFrames, Subscribe

if TYPE_CHECKING:
    from broker.monitor.instruments import Instruments

log = get_logger("broker.hub")


class Delivery:
    """The hub's publication half. See the module docstring."""

    if TYPE_CHECKING:
        settings: Settings
        backplane: Backplane
        instruments: Instruments
        _channels: dict[str, ChannelState]
        _publications: int
        _deliveries: int
        _gaps: int

        async def submit(self, command: Command) -> None: ...
        def _spawn(self, task: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None: ...
        def _detach(self, subscriber: Subscriber) -> None: ...
        def _broadcast_control(self, state: ChannelState, message: Message) -> None: ...
        def _start(self, state: ChannelState, head: Head) -> None: ...
        def _admit(
            self,
            state: ChannelState,
            subscriber: Subscriber,
            request: Subscribe,
            *,
            checked: bool = False,
        ) -> None: ...
        def _catch_up(self, state: ChannelState, head: Head) -> None: ...
        def _release_waiting(self, state: ChannelState) -> None: ...

    def _live(self, publication: PublicationFrames) -> None:
        state = self._channels.get(publication.channel)
        if state is None:
            return  # Nobody here wants it any more.
        if not state.watching or state.filling:
            state.hold(publication)
            return
        offset = publication.offset
        if offset == state.offset + 1 and publication.epoch == state.epoch:
            # The next one in order, as nearly every publication is: ``_sequence``, inlined.
            state.offset = offset
            self._fan_out(state, publication)
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
            state.hold(publication)
            self._spawn(
                self._read_range, state.name, state.epoch, state.offset, offset - 1, state.options
            )
            return
        state.offset = offset
        self._fan_out(state, publication)

    def _fan_out(self, state: ChannelState, publication: PublicationFrames) -> None:
        self._publications += 1
        refused: list[Subscriber] = []
        offered = 0
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
            offered += len(group)
            for subscriber in group:
                if not subscriber.outbox.offer(frame):
                    refused.append(subscriber)  # noqa: PERF401 - rare; the loop is for ``offer``
        # Counted per group, not per delivery: the loop above runs once per subscriber.
        self._deliveries += offered - len(refused)
        if state.recovering:
            cap = self.settings.queue.max_messages
            for subscriber, recovery in state.recovering.items():
                recovery.held.append(publication)
                if len(recovery.held) > cap:
                    refused.append(subscriber)
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
        pending, state.pending = state.pending, None
        for publication in pending or ():
            if state.filling:
                state.hold(publication)
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
            joining, state.joining = state.joining, None
            for subscriber, request in joining or ():
                if not subscriber.detached and channel in subscriber.channels:
                    self._admit(state, subscriber, request)
            pending, state.pending = state.pending, None
            for publication in pending or ():
                self._live(publication)
            return
        # Live delivery was re-established (after an outage): catch up on what was missed,
        # from the start of the stream when it is a new one.
        self._catch_up(state, head)
