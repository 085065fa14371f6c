"""The commands the hub's mailbox takes: one dataclass per kind, matched in ``Hub._handle``."""

from __future__ import annotations

from dataclasses import dataclass

from broker.backplane.base import BackplaneEvent, Head, Page
from broker.subscriber import Reply, Subscriber
from protocol import History, Presence, Subscribe, Unsubscribe


@dataclass(slots=True)
class SubscribeCommand:
    subscriber: Subscriber
    request: Subscribe


@dataclass(slots=True)
class UnsubscribeCommand:
    subscriber: Subscriber
    request: Unsubscribe


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


@dataclass(slots=True)
class UnsubscribeUserCommand:
    """Unsubscribe every connection of ``user`` here from ``channel``; replies with how many."""

    user: str
    channel: str
    reply: Reply[int]


@dataclass(slots=True)
class RecoveredCommand:
    """The result of a recovery read (None when the backplane could not be read)."""

    subscriber: Subscriber
    request: Subscribe
    upto: int
    page: Page | None


@dataclass(slots=True)
class FilledCommand:
    """The result of reading a missed range ``after < offset <= upto`` of a channel."""

    channel: str
    #: The epoch the range belongs to: a fill for a stream since replaced is ignored.
    epoch: str
    upto: int
    page: Page | None


@dataclass(slots=True)
class HeadReadCommand:
    """The channel's head as the backplane holds it (None when it could not be read), read for
    subscribes whose ``since`` this process has not reached."""

    channel: str
    head: Head | None


Command = (
    SubscribeCommand
    | UnsubscribeCommand
    | HistoryCommand
    | PresenceCommand
    | DetachCommand
    | ChatJoinCommand
    | ChatSayCommand
    | ChannelsQuery
    | UnsubscribeUserCommand
    | RecoveredCommand
    | FilledCommand
    | HeadReadCommand
    | BackplaneEvent
)
