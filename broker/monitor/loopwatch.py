"""The blocked-loop watch: how late the event loop wakes up, and what blocked it.

Everything a process serves runs on one event loop; one handler that blocks it (a synchronous
call, a long computation) stalls every connection at once. ``LoopWatch`` makes that visible:

- a task sleeps ``interval`` seconds over and over and measures how much later than asked it
  woke up (the lag), into a histogram (``broker_event_loop_lag_seconds``);
- a thread looks every ``interval / 2`` seconds whether the task is overdue by more than
  ``warning`` seconds and, if so, records where the loop's thread is right then (the innermost
  frames of its stack: file, line, function; no values);
- when the task wakes up that late it logs one ``loop.blocked`` warning with the lag, what the
  thread saw (``blocked_in``) and what the broker was doing (``describe()``: connections, hub
  mailbox, ...). At most one warning per ``quiet`` seconds; every stall is counted.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from broker.logs import get_logger
from broker.monitor.histogram import LATENCY_BUCKETS, Histogram

log = get_logger("broker.loopwatch")

LAG_BUCKETS: tuple[float, ...] = LATENCY_BUCKETS[1:]  # from a millisecond to ten seconds
#: Frames of the loop thread's stack reported, innermost last.
STACK_DEPTH = 6


class LoopWatch:
    def __init__(
        self,
        *,
        interval: float,
        warning: float,
        describe: Callable[[], dict[str, Any]] = dict,
        quiet: float = 10.0,
    ) -> None:
        self.interval = interval
        self.warning = warning
        self.describe = describe
        self.quiet = quiet
        self.lag = Histogram(LAG_BUCKETS)
        #: Wake-ups later than ``warning``.
        self.stalls = 0
        self.max_lag = 0.0
        #: When the task is due to wake up next (monotonic), read by the thread.
        self._due = 0.0
        #: What the thread saw during the current stall: (the due time it was for, the stack).
        self._seen: tuple[float, list[str]] | None = None
        self._last_warning = -float("inf")
        self._unlogged = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch,
            args=(threading.get_ident(), stop),
            name="broker-loopwatch",
            daemon=True,
        )
        self._due = time.monotonic() + self.interval
        thread.start()
        task_status.started()
        try:
            while True:
                self._due = due = time.monotonic() + self.interval
                await asyncio.sleep(self.interval)
                self.observe(time.monotonic() - due, due)
        finally:
            stop.set()

    def observe(self, lag: float, due: float) -> None:
        lag = max(0.0, lag)
        self.lag.observe(lag)
        self.max_lag = max(self.max_lag, lag)
        if lag < self.warning:
            return
        self.stalls += 1
        now = time.monotonic()
        if now - self._last_warning < self.quiet:
            self._unlogged += 1
            return
        seen = self._seen
        blocked_in = seen[1] if seen is not None and seen[0] == due else []
        log.warning(
            "loop.blocked",
            lag=round(lag, 3),
            threshold=self.warning,
            blocked_in=blocked_in,
            unlogged_stalls=self._unlogged,
            **self.describe(),
        )
        self._last_warning = now
        self._unlogged = 0

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        """The thread: note where the loop's thread is while the task is overdue."""
        period = max(0.005, self.interval / 2)
        while not stop.wait(period):
            due = self._due
            if time.monotonic() - due < self.warning:
                continue
            seen = self._seen
            if seen is not None and seen[0] == due:
                continue  # this stall is noted already
            frame = sys._current_frames().get(loop_thread)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-STACK_DEPTH:]
            self._seen = (due, [f"{f.filename}:{f.lineno} {f.name}" for f in stack])
