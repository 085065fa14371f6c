"""A channel as one process's hub sees it: subscribers, delivery position, held publications."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.backplane.base import Head
from broker.settings import NamespaceSettings
from broker.subscriber import Subscriber
from protocol import Encoding, PublicationFrames, Subscribe


@dataclass(slots=True)
class Recovery:
    """A subscribe whose missed publications are being read, and what arrived meanwhile."""

    request: Subscribe
    held: list[PublicationFrames] = field(default_factory=list)


class ChannelState:
    """One channel as this process sees it: its subscribers and its delivery position.

    ``joining``, ``recovering``, ``waiting`` and ``pending`` are None until first used (``join``,
    ``recover``, ``wait``, ``hold``): most channels never need them, and a personal channel per
    connection would carry four empty containers (about 230 bytes) for its whole life.
    """

    __slots__ = (
        "checking",
        "epoch",
        "filling",
        "joining",
        "live",
        "name",
        "offset",
        "options",
        "pending",
        "recovering",
        "target",
        "waiting",
        "watching",
    )

    def __init__(self, name: str, options: NamespaceSettings) -> None:
        self.name = name
        self.options = options
        self.epoch = ""
        #: The offset of the last publication delivered (or the head when watching started).
        self.offset = 0
        #: Whether the backplane has told the head: until then, subscribers wait in ``joining``.
        self.watching = False
        #: Whether a missed range is being read: live publications wait in ``pending``.
        self.filling = False
        self.live: dict[Encoding | None, dict[Subscriber, None]] = {}
        #: Subscribes waiting for the backplane's head (``watching``).
        self.joining: list[tuple[Subscriber, Subscribe]] | None = None
        #: Subscribers whose recovery read is in flight, with the publications held for them.
        self.recovering: dict[Subscriber, Recovery] | None = None
        #: Subscribes with a ``since`` this process has not reached (or of another epoch),
        #: waiting while it reads the channel's head and catches up with it (``target``).
        self.waiting: list[tuple[Subscriber, Subscribe]] | None = None
        #: Whether a read of the channel's head for ``waiting`` is in flight.
        self.checking = False
        #: The head this process is catching up with, once read.
        self.target: Head | None = None
        # Unbounded on purpose: it only fills while one backplane read is in flight (bounded by
        # the backplane's own timeouts), and dropping from it would lose publications for good.
        self.pending: list[PublicationFrames] | None = None

    def __len__(self) -> int:
        return (
            sum(len(group) for group in self.live.values())
            + len(self.recovering or ())
            + len(self.joining or ())
            + len(self.waiting or ())
        )

    def join(self, subscriber: Subscriber, request: Subscribe) -> None:
        """``request`` waits for the backplane's head."""
        if self.joining is None:
            self.joining = []
        self.joining.append((subscriber, request))

    def wait(self, subscriber: Subscriber, request: Subscribe) -> None:
        """``request`` waits while the channel's head is read and caught up with."""
        if self.waiting is None:
            self.waiting = []
        self.waiting.append((subscriber, request))

    def recover(self, subscriber: Subscriber, request: Subscribe) -> None:
        """``subscriber``'s missed publications are being read for ``request``."""
        if self.recovering is None:
            self.recovering = {}
        self.recovering[subscriber] = Recovery(request)

    def hold(self, publication: PublicationFrames) -> None:
        """Keep ``publication`` until the head is known or a missed range is read."""
        if self.pending is None:
            self.pending = []
        self.pending.append(publication)

    def waiting_on(self) -> list[tuple[Subscriber, Subscribe]]:
        """The subscribes that wait for the head or for a catch-up, in that order."""
        return [*(self.joining or ()), *(self.waiting or ())]

    def add(self, subscriber: Subscriber) -> None:
        self.live.setdefault(subscriber.encoding, {})[subscriber] = None

    def remove(self, subscriber: Subscriber) -> None:
        group = self.live.get(subscriber.encoding)
        if group is not None:
            group.pop(subscriber, None)
            if not group:
                del self.live[subscriber.encoding]
        if self.recovering:
            self.recovering.pop(subscriber, None)
            if not self.recovering:
                self.recovering = None
        if self.joining:
            self.joining = [(s, r) for s, r in self.joining if s is not subscriber] or None
        if self.waiting:
            self.waiting = [(s, r) for s, r in self.waiting if s is not subscriber] or None
