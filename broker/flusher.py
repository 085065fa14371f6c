"""When a connection's queued frames are written: ``FlushScheduler``, the process's one scheduler
of outbox flushes (right after the turn that queued them, or on a shared timer for a connection
under a dense stream). Its per-connection state lives in the ``Outbox`` it flushes
(``broker.outbox``), read and written here directly: this runs once per delivery.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.outbox import Outbox


class FlushScheduler:
    """Flushes the outboxes fed during a turn of the event loop right after it, or, for a
    connection under a dense stream of its own publications, at most once per ``interval``.

    The hub handles a burst of commands in one turn; each subscriber's frames from that turn then
    leave in one write, made here, without waking its writer: no task switch per delivery, and a
    batch whenever several messages are queued. So a backlog the loop works through in one turn
    leaves in one write per connection whatever the interval. An outbox whose socket does not
    take the write at once wakes its writer instead, which waits with a deadline.

    ``interval`` (``queue.flush_interval``) coalesces writes, adaptively and per connection, and
    only where it pays: for a connection that gets several publications per interval. Each
    outbox keeps a moving average of the gaps between its publications (``Outbox.offer``: each
    gap capped at ``interval``, weight ``1 / SMOOTHING``). While that average is at least
    ``interval / DENSE`` (fewer than ``DENSE`` publications per interval), every publication is
    flushed right after its turn, as with 0: waiting would batch nothing, only add latency. Once
    it is below, the connection's stream is dense: a publication that comes less than
    ``interval`` after the connection's last flush of publications waits until ``interval``
    after it, and everything queued for it by then leaves in one write (each flush due an
    interval after the previous one was due, so that a timer the loop ran late does not make the
    stream drift later). So a connection under a dense stream gets one write of about ``DENSE``
    or more publications per ``interval``, while a connection that receives at one publication
    per interval, or rarely, gets each one with no added latency, however busy the rest of the
    process is. The waiting outboxes share timers on a grid of ``interval / 8`` (a write may
    wait up to that much longer, never less): a few timers per interval for the whole process,
    not one per connection. The alternatives rejected are in docs/design.md ("Write
    coalescing").

    A control frame (a reply, ``pong``, ``welcome``, ``join``: no channel) is never delayed: its
    outbox is flushed right after the turn, with the publications queued before it, so that a
    client awaiting each reply in turn is not held to one command per ``interval``; nor does such
    a flush delay the next publication. With 0 every flush follows its turn.
    """

    #: A connection's stream is dense (worth coalescing) from this many publications per
    #: ``interval`` on, by the moving average of its gaps: each coalesced write then carries
    #: about this many or more.
    DENSE = 3
    #: The moving average's weight for the newest gap is ``1 / SMOOTHING``: enough gaps that a
    #: sparse stream with irregular gaps (Poisson) is rarely taken for a dense one, few enough
    #: that a dense one is recognised within a dozen publications.
    SMOOTHING = 8

    #: Timer slots per interval: the coarser, the fewer timers; the finer, the less a busy
    #: connection's write waits beyond ``interval``.
    GRID = 8

    __slots__ = (
        "_dense_gap",
        "_grid",
        "_interval",
        "_later",
        "_loop",
        "_soon",
        "_soon_handle",
        "_timers",
        "_turn",
        "_turn_handle",
    )

    def __init__(self, interval: float = 0.0) -> None:
        self._interval = interval
        #: The average gap below which a connection's stream is dense.
        self._dense_gap = interval / self.DENSE
        self._grid = interval / self.GRID
        #: Outboxes to flush right after this turn, and the ``call_soon`` that will.
        self._soon: list[Outbox] = []
        self._soon_handle: asyncio.Handle | None = None
        #: Outboxes waiting for a timer, by slot (the timer fires at ``slot * _grid``).
        self._later: dict[int, list[Outbox]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        #: The loop it runs in, cached: ``asyncio.get_running_loop()`` makes a ``getpid`` system
        #: call each time (CPython checks for a fork), and ``schedule`` runs once per delivery.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Counts the turns in which an outbox wrote a publication straight to its socket
        #: (``Outbox.offer``): an outbox writes at most one that way per turn, so that a burst
        #: for one connection in one turn still leaves in one write after it.
        self._turn = 0
        self._turn_handle: asyncio.Handle | None = None

    def _wrote_now(self) -> None:
        """A publication went straight to a socket in this turn: end the turn after it."""
        self._turn_handle = self._running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_handle = None
        self._turn += 1

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def interval(self) -> float:
        return self._interval

    def schedule(self, outbox: Outbox, *, urgent: bool = False) -> bool:
        """Flush ``outbox`` after this turn or, when it waits for publications only (not
        ``urgent``), its stream is dense and its own last flush of publications was less than
        ``interval`` ago, when the timer of its slot fires. Returns True for after this turn."""
        if not urgent and outbox._gap < self._dense_gap:
            loop = self._running_loop()
            now = loop.time()
            until = outbox._coalesce_until
            if now < until:
                # The slot at or after ``until`` (a hair of slack: ``until`` is often a slot's
                # time plus the interval, and a float division must not push it one slot on).
                slot = math.ceil(until / self._grid - 1e-6)
                waiting = self._later.get(slot)
                if waiting is None:
                    self._later[slot] = [outbox]
                    self._timers[slot] = loop.call_at(slot * self._grid, self._flush_later, slot)
                else:
                    waiting.append(outbox)
                return False
            # Quiet until now: this flush follows the turn, and opens the connection's interval.
            outbox._coalesce_until = now + self._interval
        self._soon.append(outbox)
        if self._soon_handle is None:
            self._soon_handle = self._running_loop().call_soon(self._flush_soon)
        return True

    def _flush_soon(self) -> None:
        self._soon_handle = None
        dirty, self._soon = self._soon, []
        for outbox in dirty:
            outbox.flush()

    def _flush_later(self, slot: int) -> None:
        del self._timers[slot]
        dirty = self._later.pop(slot)
        # The next interval counts from when this flush was due, not from when the loop got to
        # it: a stream at about one publication per interval would otherwise drift later by
        # the timer's lateness each time, and each of its publications wait longer.
        until = slot * self._grid + self._interval
        for outbox in dirty:
            # An outbox a control frame hurried meanwhile has nothing left, or what came since.
            if outbox.flush():
                outbox._coalesce_until = until
            # A flush that found nothing to write starts no interval: the connection's next
            # publication is not delayed.

    def close(self) -> None:
        """Cancel the pending flushes and, inside the loop, make them now, so no timer outlives
        the broker and nothing queued waits for one. Idempotent; the scheduler may be used again
        afterwards (the next flush of an outbox that was waiting is not delayed)."""
        if self._soon_handle is not None:
            self._soon_handle.cancel()
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._next_turn()
        for timer in self._timers.values():
            timer.cancel()
        self._soon_handle = self._loop = None
        dirty = self._soon + [outbox for waiting in self._later.values() for outbox in waiting]
        self._soon, self._later, self._timers = [], {}, {}
        for outbox in dirty:
            outbox._coalesce_until = -math.inf
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing can be written now; let the outboxes go
            for outbox in dirty:
                outbox._flush_pending = outbox._flush_soon = False
                outbox._refresh()
            return
        for outbox in dirty:
            outbox.flush()
