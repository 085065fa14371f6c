"""What the client hands its user: publications and presence changes with their data decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from protocol import StreamPosition


@dataclass(frozen=True, slots=True)
class Message:
    """One publication of a channel (wire type ``message``), ``data`` decoded to Python values."""

    channel: str
    #: Its place in the channel: 1, 2, 3, ... within ``epoch``.
    offset: int
    epoch: str
    data: Any
    #: The publisher's client id (wire field ``from``); None when published over HTTP.
    publisher: str | None

    @property
    def position(self) -> StreamPosition:
        """Where this message stands: pass it as ``since`` to resume after it."""
        return StreamPosition(offset=self.offset, epoch=self.epoch)


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A ``join`` or ``leave`` of another client, where the channel's namespace enables them.

    Unlike publications these are not retained by the broker, so one missed while disconnected
    (or dropped while the subscription's queue was full) is not recovered: ask ``presence()``.
    """

    kind: Literal["join", "leave"]
    channel: str
    client: str
    user: str | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A ``history`` reply: the channel's ``epoch`` and latest ``offset``, and the publications."""

    channel: str
    epoch: str
    offset: int
    publications: list[Message]
