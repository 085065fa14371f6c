"""One channel subscription: its stream position, its bounded queue and its async iterator.

The session's reader puts publications in (``accept``, never waiting) and the user takes them out
by iterating. The subscription keeps the last ``{offset, epoch}`` it queued: that is the ``since``
of the next resubscription, and the line below which a publication is a duplicate.

**A full queue never blocks the reader.** Blocking it (backpressure up to the server, which drops
us as a slow consumer, and we recover on reconnect) was the other option. It was rejected because
one reader serves the whole connection: while it waits for room in one subscription, nothing else
is read, not the other channels, not the heartbeat's ``pong``, and not the reply to a request,
for instance the ``publish`` that the consumer of that very queue is awaiting inside its
``async for`` loop, which would deadlock. Instead the subscription starts *lagging*: it drops what
comes live, and once the consumer has made room the session fetches what was dropped with
``history`` (``since`` = the last queued position) and goes live again where that reply ends
(a later duplicate is dropped by offset, a later hole is fetched the same way). A ``gap`` from
the server (overflow policy ``drop_oldest``) and a hole in the offsets take
the same path. Nothing is lost while the broker retains history; when it no longer does, the
iterator raises ``ResyncNeeded`` instead of carrying on silently.

**Recovery failed → ``ResyncNeeded``, once, then the subscription goes on.** When a
resubscription comes back ``recovered: false`` (the epoch changed, or the publications after our
position are no longer retained), a ``ResyncNeeded(channel, epoch, offset)`` marker is queued
after what was queued before it, so the user first gets everything up to the break, then the
exception, then the publications after ``offset`` of the new ``epoch``. The subscription is not
closed: a user who reloads its state from its own source of truth can iterate on (``async for``
again over the same subscription). Closing it instead would force every user to resubscribe by
hand, and a dropped epoch is an expected event (a broker restart in memory mode), not a failure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import anyio

from broker.client.errors import ResyncNeeded
from broker.client.messages import Message, PresenceChange
from protocol import Gap, HistoryResult, Join, Leave, Publication, StreamPosition, Subscribed

if TYPE_CHECKING:
    from broker.client.subscribing import Subscribing

ItemT = TypeVar("ItemT", bound=Message | PresenceChange)

_Item = Message | PresenceChange | ResyncNeeded


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """Counters of one subscription since it was made."""

    #: Items waiting for the consumer.
    queued: int
    #: Publications queued from live messages.
    live: int
    #: Publications queued from ``subscribed`` replies that recovered them after a reconnection.
    recovered: int
    #: Publications queued from ``history`` after a gap or a full queue.
    fetched: int
    #: Live publications not queued because the subscription lagged (fetched later, or lost
    #: with a resync).
    skipped: int
    #: ``ResyncNeeded`` markers queued.
    resyncs: int


class Subscription(Generic[ItemT]):
    """An async iterator over one channel's messages (and presence changes, if asked for).

    Iteration ends (``StopAsyncIteration``) after ``unsubscribe()`` or when the client closes,
    once what was already queued has been taken. It raises ``ResyncNeeded`` where recovery
    failed (see the module docstring), and the client's terminal error (``Disconnected``,
    ``ConnectFailed``) if the client gives up.
    """

    def __init__(
        self,
        client: Subscribing,
        channel: str,
        *,
        since: StreamPosition | None,
        queue_size: int,
        joins_and_leaves: bool,
        decode: Callable[[Publication], Message],
        server_side: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.channel = channel
        #: Made by the server (the token's ``subs``, an operator), not by ``subscribe``.
        self.server_side = server_side
        self._client = client
        self._decode = decode
        self._joins_and_leaves = joins_and_leaves
        self._size = queue_size
        self._items: deque[_Item] = deque()
        #: The last queued position; None until the first ``subscribed`` (without ``since``).
        self.epoch: str | None = None if since is None else since.epoch
        self.offset = 0 if since is None else since.offset
        #: Dropping live publications until ``history`` has filled in what was dropped.
        self.lagging = False
        #: The highest offset seen or announced while lagging.
        self._seen = self.offset
        #: Whether the session runs a catch-up task for it; owned by the session.
        self.catching_up = False
        #: The connection number the last ``subscribe`` went out on (0: none yet).
        self.sent_on = 0
        self.confirmed = anyio.Event()
        self.subscribe_error: BaseException | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._changed: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._counts = {"live": 0, "recovered": 0, "fetched": 0, "skipped": 0, "resyncs": 0}

    # --- for the user ---------------------------------------------------------------------------

    @property
    def position(self) -> StreamPosition | None:
        """The last position queued for the user (None before the first ``subscribed``)."""
        return None if self.epoch is None else StreamPosition(offset=self.offset, epoch=self.epoch)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Items queued and not yet taken."""
        return len(self._items)

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(queued=len(self._items), **self._counts)

    def __aiter__(self) -> Subscription[ItemT]:
        return self

    async def __anext__(self) -> ItemT:
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        item = self._items.popleft()
        if self._room is not None and self.room() >= self._low_water():
            self._room.set()
            self._room = None
        if isinstance(item, ResyncNeeded):
            raise item
        return cast(ItemT, item)

    async def unsubscribe(self) -> None:
        """Stop the subscription. What is already queued can still be taken, then iteration ends.

        Idempotent; after the client has closed it only closes the iterator.
        """
        await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription[ItemT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.unsubscribe()

    # --- for the session (called by its reader: never waits) -----------------------------------

    def subscribed(self, reply: Subscribed, since: StreamPosition | None) -> bool:
        """Apply a ``subscribed`` reply to a ``subscribe`` sent with ``since``.

        Returns True when publications had to be dropped and must be fetched (``catch_up``).
        """
        self.lagging = False
        needs_fetch = False
        if since is None:
            self.epoch, self.offset = reply.epoch, reply.offset
        elif reply.recovered:
            # Exactly the missed publications, in order; live ones follow (docs/protocol.md §1).
            for publication in reply.publications:
                needs_fetch |= self.accept(publication, source="recovered")
            self.epoch = reply.epoch
        else:
            self.resync(reply.epoch, reply.offset)
        self._seen = max(self._seen, self.offset)
        return needs_fetch

    def server_subscribed(self, reply: Subscribed) -> bool:
        """Apply a ``subscribed`` with ``id`` 0: the server subscribed the connection itself.

        The first one starts the subscription at the reply's position (with the publications
        it recovered, when the operator gave a position). A later one (the token's ``subs`` on
        a new connection, made from the channel's current position) is a gap from the position
        the subscription had: returns True when that must be fetched (``catch_up``)."""
        if self.epoch is None:
            recovered = reply.publications if reply.recovered else []
            self.epoch = reply.epoch
            self.offset = recovered[0].offset - 1 if recovered else reply.offset
            self._seen = self.offset
            needs_fetch = False
            for publication in recovered:
                needs_fetch |= self.accept(publication, source="recovered")
            return needs_fetch
        if reply.epoch != self.epoch:
            self.resync(reply.epoch, reply.offset)
            return False
        self._seen = max(self._seen, reply.offset)
        if reply.offset <= self.offset or self.lagging:
            return False
        self.lagging = True
        return True

    def accept(
        self, publication: Publication, source: Literal["live", "recovered"] = "live"
    ) -> bool:
        """Queue a publication unless it is a duplicate or the subscription lags.

        Returns True when it starts lagging: the session must then ``catch_up``.
        """
        if self.epoch is not None and publication.epoch != self.epoch:
            # A stream we did not know: what came before it cannot be fetched any more.
            self.resync(publication.epoch, publication.offset - 1)
        offset = publication.offset
        if offset <= self.offset:
            return False  # a duplicate: already queued
        if offset > self._seen:
            self._seen = offset
        if self.lagging:
            self._counts["skipped"] += 1
            return False
        if offset != self.offset + 1 or len(self._items) >= self._size:
            # A hole the server did not announce, or no room: fetch from ``offset`` on later.
            self.lagging = True
            self._counts["skipped"] += 1
            return True
        self._push(self._decode(publication))
        self.offset = offset
        self._counts[source] += 1
        return False

    def gap(self, gap: Gap) -> bool:
        """The server dropped publications for us; True when they must be fetched."""
        self._seen = max(self._seen, gap.to_offset)
        if gap.to_offset <= self.offset or self.lagging:
            return False
        self.lagging = True
        return True

    def caught_up(self, reply: HistoryResult) -> None:
        """Apply a ``history`` reply to a catch-up request made ``since`` the current position.

        Goes live again when the reply reaches the channel's latest offset. A live publication
        read afterwards at or below that offset is a duplicate and dropped; one further ahead
        than the next offset is a hole, and starts another catch-up.
        """
        if reply.epoch != self.epoch:
            self.resync(reply.epoch, reply.offset)
            return
        missed = [p for p in reply.publications if p.offset > self.offset]
        if reply.offset > self.offset and (not missed or missed[0].offset != self.offset + 1):
            # The oldest ones we need are no longer retained.
            self.resync(reply.epoch, max(reply.offset, self._seen))
            return
        for publication in missed:
            if publication.offset != self.offset + 1 or len(self._items) >= self._size:
                break
            self._push(self._decode(publication))
            self.offset = publication.offset
            self._counts["fetched"] += 1
        if self.offset >= reply.offset:
            self.lagging = False

    def history_unavailable(self) -> None:
        """A catch-up ``history`` request was refused for good: history is off in this
        namespace, or a retained publication cannot be sent in this connection's encoding."""
        assert self.epoch is not None
        # Every publication up to ``_seen`` was read (and dropped) before the error reply; the
        # ones after it arrive live.
        self.resync(self.epoch, self._seen)

    def presence_change(self, change: Join | Leave) -> None:
        if not self._joins_and_leaves or len(self._items) >= self._size:
            return  # not asked for, or no room: presence changes are not retained anywhere
        if isinstance(change, Join):
            self._push(PresenceChange("join", change.channel, change.client, change.user))
        else:
            self._push(PresenceChange("leave", change.channel, change.client, change.user))

    def resync(self, epoch: str, offset: int) -> None:
        """Queue a ``ResyncNeeded`` and go on live after ``offset`` of ``epoch``."""
        self.epoch, self.offset = epoch, offset
        self._seen = offset
        self.lagging = False
        marker = ResyncNeeded(self.channel, epoch, offset)
        self._counts["resyncs"] += 1
        # It does not count against the queue's bound, and two in a row say no more than the
        # later one: raise once.
        if self._items and isinstance(self._items[-1], ResyncNeeded):
            self._items[-1] = marker
        else:
            self._push(marker)

    def close(self, error: BaseException | None = None) -> None:
        """No more items: iteration ends after the queued ones, raising ``error`` if given."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._wake()
        if self._room is not None:
            self._room.set()
            self._room = None

    def room(self) -> int:
        return max(0, self._size - len(self._items))

    async def wait_room(self) -> int:
        """Wait until the consumer has freed at least half the queue; the free room."""
        while self.room() < self._low_water() and not self._closed:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        return self.room()

    def _low_water(self) -> int:
        return max(1, self._size // 2)

    def _push(self, item: _Item) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "lagging" if self.lagging else "live"
        kind = " server-side" if self.server_side else ""
        return (
            f"<Subscription {self.channel!r}{kind} {state} at {self.offset}@{self.epoch} "
            f"queued={len(self._items)}>"
        )


# ``Subscription[Any]`` where the item type does not matter (the session's table).
AnySubscription = Subscription[Any]
