"""The chat room of ``/ws/chat`` (docs/protocol.md §3), part of the hub.

``ChatRoom`` is a mixin of ``broker.hub.Hub``. The room is a channel of plain-text frames under a
name no client can use (``#`` is outside the client alphabet), with each frame built once for the
whole room. A frame said here (``Client says: ...``, or the notice that a member left) goes to this
process's members at once and, through the backplane (``room_publish``), to the members on every
other process, which deliver it as a ``RoomFrame``: on Redis the room spans the whole broker, as
the tutorial's chat must once it runs on several workers. Across processes the room is best
effort, as the tutorial's was: a frame said while Redis is unreachable reaches this process only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.channel_state import ChannelState
from broker.subscriber import Subscriber
from protocol import Frame

if TYPE_CHECKING:
    from broker.backplane.base import Backplane
    from broker.settings import Settings

#: The chat room's channel name: ``#`` is outside the client alphabet, so no client can reach it.
CHAT_ROOM = "#chat"
CHAT_LEFT = b"A client has left the chat."


class ChatRoom:
    """The hub's chat room. See the module docstring."""

    if TYPE_CHECKING:
        settings: Settings
        backplane: Backplane
        _channels: dict[str, ChannelState]
        _deliveries: int

        def _detach(self, subscriber: Subscriber) -> None: ...

    def _chat_join(self, subscriber: Subscriber) -> None:
        if subscriber.detached:
            return
        state = self._channels.get(CHAT_ROOM)
        if state is None:
            state = ChannelState(CHAT_ROOM, self.settings.default_namespace)
            state.watching = True
            self._channels[CHAT_ROOM] = state
        state.add(subscriber)
        subscriber.channels.add(CHAT_ROOM)

    def _chat_say(self, subscriber: Subscriber, text: str) -> None:
        if subscriber.detached:
            return
        self._chat_said(f"Client says: {text}".encode())

    def _chat_said(self, payload: bytes) -> None:
        """A frame said on this process: to its members, and to the other processes'."""
        self._chat_broadcast(Frame(payload, CHAT_ROOM))
        self.backplane.room_publish(CHAT_ROOM, payload)

    def _chat_broadcast(self, frame: Frame) -> None:
        state = self._channels.get(CHAT_ROOM)
        if state is None:
            return
        group = state.live.get(None, {})
        refused = [subscriber for subscriber in group if not subscriber.outbox.offer(frame)]
        self._deliveries += len(group) - len(refused)
        for subscriber in refused:
            self._detach(subscriber)
