"""The bounded outbox between the hub and one connection's writer.

The hub (and the connection's own reader, for replies it makes itself) put frames in with
``offer``, which never waits: a broadcast must never await a client. The writer takes them out with
``wait_ready`` then ``drain``. The outbox is bounded both by message count and by bytes; what
happens when it is full is the configured ``OverflowPolicy``:

* ``DISCONNECT``: ``offer`` refuses the frame and marks the outbox overflowed; the writer then
  drops the client with ``disconnect`` and close code 4008.
* ``DROP_OLDEST``: the oldest queued publications are dropped to make room, and the writer sends
  a ``gap`` message per channel naming the skipped offsets before what remains. Control frames
  (replies, ``welcome``) are never dropped; if they alone overflow the outbox, the client is
  disconnected as above.

A closed outbox refuses everything, so a departed connection costs the hub one check, not memory.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from contextvars import Context
from dataclasses import dataclass
from typing import Protocol

from broker.flusher import FlushScheduler
from broker.settings import OverflowPolicy
from broker.writers_behind import WRITERS_BEHIND
from protocol import Frame

#: The moving average's weight for the newest gap (``Outbox.offer``).
_WEIGHT = 1.0 / FlushScheduler.SMOOTHING


class DirectWriter(Protocol):
    """What writes a publication or a reply straight to a connection's socket (``Outbox.writer``:
    ``TransportLink``)."""

    def write_now(self, frame: Frame) -> bool:
        """Write ``frame`` now if the socket takes it at once, else nothing; whether it did."""


@dataclass(slots=True)
class SkippedRange:
    """Publications of ``channel`` from ``first`` to ``last`` (inclusive) that were dropped."""

    channel: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class OutboxStatistics:
    queued_messages: int
    queued_bytes: int
    max_messages: int
    max_bytes: int
    dropped: int
    overflowed: bool
    #: What ``close`` released: still queued when the connection was let go.
    released_messages: int = 0
    released_bytes: int = 0


class Outbox:
    """A bounded queue of frames for one connection. ``offer`` never blocks."""

    __slots__ = (
        "_bytes",
        "_closed",
        "_coalesce_until",
        "_direct",
        "_dropped",
        "_flush_pending",
        "_flush_soon",
        "_frames",
        "_gap",
        "_interrupted",
        "_last_publication",
        "_overflowed",
        "_ready_callback",
        "_ready_context",
        "_released",
        "_skipped",
        "_waiter",
        "_writer",
        "_written_turn",
        "flusher",
        "max_bytes",
        "max_messages",
        "on_overflow",
        "policy",
        "write_through",
    )

    def __init__(self, *, max_messages: int, max_bytes: int, policy: OverflowPolicy) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        # A list, not a deque: an empty deque holds a 64-slot block (about 600 bytes) for the
        # life of the connection, and frames leave all at once (``drain``), not one by one.
        self._frames: list[Frame] = []
        self._bytes = 0
        self._dropped = 0
        self._overflowed = False
        self._closed = False
        self._interrupted = False
        self._released = (0, 0)
        self._skipped: dict[str, SkippedRange] = {}
        self._waiter: asyncio.Future[None] | None = None
        #: ``call_when_ready``'s callback and its context: the waiter of a writer without a task.
        self._ready_callback: Callable[[], None] | None = None
        self._ready_context: Context | None = None
        #: Called once when the outbox overflows, so a writer stuck on the socket can stop
        #: waiting for it: the client is being dropped anyway.
        self.on_overflow: Callable[[], None] | None = None
        #: Set by the connection: writes everything queued straight to the socket when it can
        #: do so at once, returning whether it did. Called only while the writer waits.
        self.write_through: Callable[[], bool] | None = None
        #: Set by the connection: gathers the outboxes fed during one turn of the event loop and
        #: flushes them right after it, or after ``queue.flush_interval`` under a sustained
        #: stream to this connection (``FlushScheduler``).
        self.flusher: FlushScheduler | None = None
        #: Set by the connection (with ``flusher``, through ``writer``): writes one publication
        #: straight to the socket, in the caller's turn, when nothing is queued or pending
        #: before it and the connection's stream is not dense (``offer``): no queueing, no
        #: flush per delivery.
        self._writer: DirectWriter | None = None
        #: ``_writer`` while the outbox's side of the direct path is clear (``_direct_now``),
        #: else None: one attribute read per delivery instead of eight. Set to None wherever
        #: one of those conditions stops holding, recomputed (``_refresh``) wherever one may
        #: start to.
        self._direct: DirectWriter | None = None
        #: The flusher's turn in which ``writer`` last wrote a publication: one per turn.
        self._written_turn = -1
        self._flush_pending = False
        #: Whether the pending flush is one right after the turn (not the flusher's timer).
        self._flush_soon = False
        #: ``loop.time()`` before which a publication waits for the flusher's timer: this
        #: connection's last flush of publications plus the interval (``FlushScheduler``).
        self._coalesce_until = -math.inf
        #: The moving average of the gaps between this connection's publications, each capped
        #: at the flusher's interval, and when the last one came: whether its stream
        #: is dense enough to coalesce (``FlushScheduler``). It starts sparse.
        self._gap = math.inf
        self._last_publication = -math.inf

    # --- producer side (hub, reader) ------------------------------------------------------------

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` without waiting.

        Returns False when the outbox is closed or has overflowed under the ``DISCONNECT`` policy:
        the connection is being dropped, and the caller should stop feeding it.
        """
        direct = self._direct
        if direct is None and (self._closed or self._overflowed):
            return False
        size = len(frame.data)
        flusher = self.flusher
        if flusher is not None:
            interval = flusher._interval
            if interval and frame.channel is not None:
                # The gap, in the moving average (each gap and the average capped at the
                # interval): inline, as this runs once per delivery.
                now = frame.accepted or time.monotonic()
                gap = now - self._last_publication
                self._last_publication = now
                average = self._gap
                if gap < interval:
                    if average > interval:
                        average = interval
                    if gap < 0.0:  # taken in out of order (another process's, over a backplane)
                        gap = 0.0
                    self._gap = average + (gap - average) * _WEIGHT
                elif average < interval:
                    self._gap = average + (interval - average) * _WEIGHT
                # Otherwise a sparse stream stays as sparse as it was: nothing to compute.
            if (
                # The direct path: straight to the socket, when nothing is queued, pending or
                # dropped before it and the writer is idle (not closing, not waiting for the
                # socket): ``_direct``; the stream is not dense (it would be coalesced; a
                # reply's gap is not counted, it is never held), and this outbox wrote none
                # that way in this turn (a burst in one turn leaves in one write).
                direct is not None
                and self._gap >= flusher._dense_gap
                and self._written_turn != flusher._turn
                and size <= self.max_bytes
                and direct.write_now(frame)
            ):
                self._written_turn = flusher._turn
                if flusher._turn_handle is None:
                    flusher._wrote_now()
                return True
        # A reply (no channel) is let past the byte bound while the outbox is not already over
        # it: a recovery or history reply may be larger than the whole outbox, and refusing it
        # would drop a client that reads fine and could never recover.
        limit = self.max_bytes if frame.channel is not None else self.max_bytes + size - 1
        if len(self._frames) >= self.max_messages or self._bytes + size > limit:
            if self.policy is OverflowPolicy.DISCONNECT:
                self.overflow()
                return False
            if size > self.max_bytes and frame.channel is not None:
                # It can never fit: it is skipped itself, and with it whatever of its channel is
                # still queued, so that the ``gap`` (sent first) comes after nothing of its
                # channel and names one contiguous range.
                self._skip_channel(frame)
                self._wake()
                return True
            if not self._make_room(size):
                self.overflow()
                return False
        self._frames.append(frame)
        self._bytes += size
        self._direct = None
        if self._waiter is not None or self._ready_callback is not None:
            if flusher is None or self.write_through is None:
                self._wake()
            elif not self._flush_pending:
                # Written after this turn of the loop, or under a sustained stream at the
                # flusher's next tick, with whatever else is queued by then.
                self._flush_pending = True
                self._flush_soon = flusher.schedule(self, urgent=frame.channel is None)
            else:
                if frame.channel is None and not self._flush_soon:
                    # A reply must not wait for the timer: flush after this turn, with what is
                    # queued before it.
                    self._flush_soon = flusher.schedule(self, urgent=True)
                if len(self._frames) * 2 >= self.max_messages:
                    # Half full within one turn (a reader answering thousands of pings read at
                    # once, a backplane settling a thousand publishes, a dense stream's window):
                    # write it now if the socket takes it, rather than let a client that reads
                    # fine overflow before the turn ends. A socket that does not take it wakes
                    # the writer, and the outbox fills only if the client does not read.
                    self.flush()
        elif self.write_through is None and len(self._frames) * 2 >= self.max_messages:
            # The writer task is awake but cannot run before the turn ends: ask the loop feeding
            # this outbox to let the loop turn (``broker.writers_behind``).
            WRITERS_BEHIND.wanted = True
        return True

    def _make_room(self, size: int) -> bool:
        """Drop the oldest publications until ``size`` more bytes fit (policy ``DROP_OLDEST``).

        Control frames (``channel`` None) are never dropped and keep their place and order.
        Returns whether there is room now.
        """
        frames = self._frames
        kept: list[Frame] = []
        taken = 0
        while taken < len(frames) and (
            len(frames) - taken + len(kept) >= self.max_messages
            or self._bytes + size > self.max_bytes
        ):
            oldest = frames[taken]
            taken += 1
            if oldest.channel is None:
                kept.append(oldest)
                continue
            self._bytes -= len(oldest.data)
            self._record_skip(oldest)
        self._frames = frames = kept + frames[taken:]
        return len(frames) < self.max_messages and self._bytes + size <= self.max_bytes

    def _skip_channel(self, incoming: Frame) -> None:
        channel = incoming.channel
        remaining: list[Frame] = []
        for frame in self._frames:
            if frame.channel == channel:
                self._bytes -= len(frame.data)
                self._record_skip(frame)
            else:
                remaining.append(frame)
        self._frames = remaining
        self._record_skip(incoming)

    def _record_skip(self, frame: Frame) -> None:
        assert frame.channel is not None
        self._dropped += 1
        self._direct = None
        skipped = self._skipped.get(frame.channel)
        if skipped is None:
            self._skipped[frame.channel] = SkippedRange(frame.channel, frame.offset, frame.offset)
        else:
            # Frames leave in queue order, which is offset order within a channel.
            skipped.last = frame.offset
        # A frame dropped when it was the newcomer never sat in the queue: nothing else to undo.

    def overflow(self) -> None:
        """Mark the client as too slow: refuse every later frame; the writer drops it (4008)."""
        if self._overflowed:
            return
        self._overflowed = True
        self._direct = None
        self._wake()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """Refuse every later frame and release what is queued. Idempotent."""
        if not self._closed:
            self._released = (len(self._frames), self._bytes)
        self._closed = True
        self._direct = None
        self._frames.clear()
        self._bytes = 0
        self._skipped.clear()
        self._wake()

    def flush(self) -> bool:
        """Write what is queued now if the socket takes it, else wake the writer to do it.

        Returns whether there was anything for this flush to do.
        """
        self._flush_pending = self._flush_soon = False
        self._refresh()
        if self._waiter is None and self._ready_callback is None:
            return False  # The writer is awake: it takes everything queued anyway.
        if not self._frames and not self._skipped:
            # An earlier flush took everything (one hurried by a control frame), or the writer
            # did (woken meanwhile, by an overflow or a close): nothing to write or wake it for.
            return False
        write_through = self.write_through
        if (
            write_through is not None
            and not self._overflowed
            and not self._closed
            and not self._interrupted
            and write_through()
        ):
            return True
        self._wake()
        return True

    def interrupt(self) -> None:
        """Make ``wait_ready`` return now and from now on, so the writer looks at its state."""
        self._interrupted = True
        self._direct = None
        self._wake()

    def _wake(self) -> None:
        callback = self._ready_callback
        if callback is not None:
            self._ready_callback = None
            self._direct = None
            asyncio.get_running_loop().call_soon(callback, context=self._ready_context)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- consumer side (writer) -----------------------------------------------------------------

    @property
    def overflowed(self) -> bool:
        """Whether a frame was refused under the ``DISCONNECT`` policy (or control frames alone
        overflowed under ``DROP_OLDEST``): the client must be dropped."""
        return self._overflowed

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    async def wait_ready(self) -> None:
        """Return once frames are queued, or the outbox overflowed, was closed or interrupted."""
        while not (
            self._frames or self._skipped or self._overflowed or self._closed or self._interrupted
        ):
            # A bare future, not an anyio Event: this runs once per delivery burst per
            # connection, and anyio's Event costs a backend lookup and two objects more. The
            # broker runs on asyncio (uvicorn) only.
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    def call_when_ready(self, callback: Callable[[], None], context: Context | None) -> None:
        """``wait_ready`` without a task: call ``callback`` (in ``context``) soon after frames
        are queued, or the outbox overflows, is closed or interrupted; soon, if it already is.

        A connection served through ``TransportLink`` has no writer task: an idle task costs
        several KiB per connection, and most connections are idle most of the time.
        """
        loop = asyncio.get_running_loop()
        if self._frames or self._skipped or self._overflowed or self._closed or self._interrupted:
            loop.call_soon(callback, context=context)
            return
        self._ready_callback = callback
        self._ready_context = context
        self._refresh()

    @property
    def writer(self) -> DirectWriter | None:
        return self._writer

    @writer.setter
    def writer(self, writer: DirectWriter | None) -> None:
        self._writer = writer
        self._refresh()

    def _direct_now(self) -> DirectWriter | None:
        """What ``_direct`` must be: the writer while nothing is queued, pending or dropped,
        the outbox is open and the writer is idle, else None."""
        if (
            self._frames
            or self._ready_callback is None
            or self._flush_pending
            or self._skipped
            or self._interrupted
            or self._closed
            or self._overflowed
        ):
            return None
        return self._writer

    def _refresh(self) -> None:
        self._direct = self._direct_now()

    def take_skipped(self) -> list[SkippedRange]:
        """The publications dropped since the last call, one range per channel."""
        if not self._skipped:
            return []
        skipped = list(self._skipped.values())
        self._skipped.clear()
        self._refresh()
        return skipped

    def drain(self) -> list[Frame]:
        """Everything queued, oldest first; the outbox is empty afterwards."""
        frames, self._frames = self._frames, []
        self._bytes = 0
        # Drained by ``write_through`` (the writer still idle), the direct path may be open.
        self._refresh()
        return frames

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            queued_messages=len(self._frames),
            queued_bytes=self._bytes,
            max_messages=self.max_messages,
            max_bytes=self.max_bytes,
            dropped=self._dropped,
            overflowed=self._overflowed,
            released_messages=self._released[0],
            released_bytes=self._released[1],
        )
