"""One timer per process for every connection's liveness deadlines: a sweep bucketed by deadline.

Each connection has two deadlines that are checked, not met, almost every time: the broker's
heartbeat (a ``/v1/ws`` client silent for ``heartbeat`` + grace is closed with 4009) and the
server's WebSocket ping (sent every ``heartbeat`` seconds, 1011 when no pong comes). An asyncio
``TimerHandle`` for each would cost about 550 bytes per connection per timer, for as long as the
connection lives. Here a connection costs one slot (``sweep_tick``) and an entry in a bucket.

``Sweep`` keeps its entries in buckets keyed by their deadline rounded *up* to a tick of
``resolution`` seconds (so a deadline is never met early, and at most one tick late), a heap of
the ticks that have a bucket, and one loop timer at the earliest. When it fires, only the buckets
that are due are touched; each entry's ``on_sweep(now)`` says when it is next due (it is put in
that bucket) or ``None`` (it leaves the sweep). A connection heard from does not move: its entry
is looked at once per deadline and put further on, as the per-connection timers it replaces
did. At most ``BATCH`` entries are handled per turn of the loop, so that 19,000 connections due
in the same second do not hold the loop for long.

``sweep(interval)`` is the loop's sweep for deadlines about ``interval`` seconds apart: its
resolution is ``interval / 8``, at most one second (the default 25 s heartbeat and 35 s silence
share one sweep; a test's 0.3 s heartbeat gets a finer one). docs/design.md ("Liveness
deadlines") records the alternatives.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Protocol

from broker.logs import get_logger

__all__ = ["BATCH", "Sweep", "Swept", "sweep"]

log = get_logger("broker.heartbeats")

#: Entries handled per turn of the loop; the rest of what is due follows in the next turns.
BATCH = 2000
#: The coarsest tick: a deadline is met at most this late.
MAX_RESOLUTION = 1.0


class Swept(Protocol):
    """What a ``Sweep`` holds: an object with one free slot and a check."""

    #: The tick of the bucket the entry is in; None when it is not in the sweep.
    sweep_tick: int | None

    def on_sweep(self, now: float) -> float | None:
        """Called at or after the entry's deadline (``loop.time()`` ``now``): do what is due
        and return the next deadline, or None to leave the sweep."""
        ...


class Sweep:
    """Deadlines of many objects, one loop timer (module docstring)."""

    __slots__ = ("_armed", "_buckets", "_done", "_resolution", "_ticks")

    def __init__(self, resolution: float, now: float) -> None:
        self._resolution = resolution
        #: The entries due at each tick, in a dict so that one leaves in O(1).
        self._buckets: dict[int, dict[Swept, None]] = {}
        #: The ticks of ``_buckets``, a heap (each pushed once, when its bucket is made).
        self._ticks: list[int] = []
        #: Every tick up to this one is handled (or being handled): new entries go later.
        self._done = math.floor(now / resolution)
        #: The tick the earliest loop timer is set for. The handle is not kept (it refers to
        #: its loop, and ``_SWEEPS`` holds loops weakly): a timer set for a later tick before an
        #: earlier one was needed fires in vain, and only that.
        self._armed: int | None = None

    @property
    def resolution(self) -> float:
        return self._resolution

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def schedule(self, entry: Swept, when: float) -> None:
        """Have ``entry.on_sweep`` called at ``when`` (``loop.time()``) or up to a tick later;
        moves the entry if it is in the sweep already."""
        tick = math.ceil(when / self._resolution)
        if tick <= self._done:
            tick = self._done + 1
        old = entry.sweep_tick
        if old == tick:
            return
        buckets = self._buckets
        if old is not None:
            previous = buckets.get(old)
            if previous is not None:
                previous.pop(entry, None)
        bucket = buckets.get(tick)
        if bucket is None:
            bucket = buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._armed is None or tick < self._armed:
                self._arm(tick)
        bucket[entry] = None
        entry.sweep_tick = tick

    def cancel(self, entry: Swept) -> None:
        """Take ``entry`` out of the sweep (nothing happens if it is not in)."""
        tick = entry.sweep_tick
        if tick is not None:
            entry.sweep_tick = None
            bucket = self._buckets.get(tick)
            if bucket is not None:
                bucket.pop(entry, None)

    def _arm(self, tick: int) -> None:
        self._armed = tick
        asyncio.get_running_loop().call_at(tick * self._resolution, self._run, tick)

    def _run(self, fired: int) -> None:
        if fired == self._armed:
            self._armed = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        # asyncio may run a timer up to its clock's resolution early: the fired tick is due.
        due = max(fired, math.floor(now / self._resolution))
        ticks = self._ticks
        buckets = self._buckets
        budget = BATCH
        while ticks and ticks[0] <= due:
            tick = ticks[0]
            # Anything scheduled from here on goes after this tick, never into this bucket.
            if tick > self._done:
                self._done = tick
            bucket = buckets.get(tick)
            while bucket:
                if budget == 0:
                    # The rest next turn; entries still in the bucket can be cancelled meanwhile.
                    loop.call_soon(self._run, due)
                    return
                budget -= 1
                entry, _ = bucket.popitem()
                entry.sweep_tick = None
                try:
                    deadline = entry.on_sweep(now)
                except Exception:
                    log.exception("heartbeats.check_failed")
                    continue
                if deadline is not None:
                    self.schedule(entry, deadline)
            heapq.heappop(ticks)
            buckets.pop(tick, None)
        if due > self._done:
            self._done = due
        if ticks and self._armed is None:
            self._arm(ticks[0])


#: Each event loop's sweeps, by resolution.
_SWEEPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Sweep]] = (
    weakref.WeakKeyDictionary()
)


def resolution_for(interval: float) -> float:
    """The tick for deadlines about ``interval`` seconds apart: an eighth of it, at most 1 s."""
    return min(MAX_RESOLUTION, interval / 8) if interval > 0 else MAX_RESOLUTION


def sweep(interval: float) -> Sweep:
    """The running loop's sweep for deadlines about ``interval`` seconds apart."""
    loop = asyncio.get_running_loop()
    resolution = resolution_for(interval)
    sweeps = _SWEEPS.get(loop)
    if sweeps is None:
        sweeps = _SWEEPS[loop] = {}
    found = sweeps.get(resolution)
    if found is None:
        found = sweeps[resolution] = Sweep(resolution, loop.time())
    return found
