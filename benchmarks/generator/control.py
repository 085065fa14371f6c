"""What the generator's processes tell each other, and the async side of their pipes.

The parent sends commands (``Warmup``, ``Go``, ``Drain``, ``Stop``); a child answers with
``Ready``, ``Warm`` and finally a report. Every value is a small picklable dataclass sent over a
``multiprocessing`` pipe; ``AsyncInbox`` lets a child's event loop await the parent's commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Literal

from benchmarks.wire import Protocol

#: Which WebSocket client the generator's processes use: ``websockets`` (the library's asyncio
#: client) or ``fast`` (``benchmarks.fastws``, a few microseconds per frame).
ClientKind = Literal["websockets", "fast"]


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """One load run: who connects where, and what the publisher sends.

    With ``channels`` > 1 (``/v1/ws`` only), subscriber ``i`` (counted over every worker)
    subscribes to channel ``<channel>-<i % channels>`` and publication ``seq`` goes to channel
    ``<channel>-<seq % channels>``: each subscriber is owed only its own channel's publications.
    """

    url: str
    protocol: Protocol
    channel: str = "bench"
    subscribers: int = 100
    workers: int = 2
    rate: float = 50.0
    duration: float = 10.0
    message_bytes: int = 16384
    #: Seconds subscribers may take, after the last publication, to receive what is missing.
    drain_timeout: float = 5.0
    connect_timeout: float = 30.0
    warmup_timeout: float = 15.0
    #: Seconds past ``duration`` the publisher may still spend in a blocked send.
    send_grace: float = 1.0
    client: ClientKind = "websockets"
    channels: int = 1
    #: Seconds between warm-up rounds (one publication to every channel per round).
    warmup_interval: float = 0.05
    #: Connection attempts in flight at once, per worker process.
    connect_concurrency: int = 25

    @property
    def planned(self) -> int:
        return max(1, round(self.rate * self.duration))

    def channel_name(self, index: int) -> str:
        """The name of channel ``index`` (``channel`` itself when there is only one)."""
        return self.channel if self.channels <= 1 else f"{self.channel}-{index % self.channels}"

    def owed(self, position: int, sent: int) -> int:
        """How many of publications ``0 .. sent-1`` subscriber ``position`` should receive."""
        if self.channels <= 1:
            return sent
        first = position % self.channels
        return 0 if first >= sent else (sent - first + self.channels - 1) // self.channels


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    index: int
    load: LoadSpec
    clients: int
    #: Position of this worker's first client among all subscribers (channel assignment).
    first: int = 0


@dataclasses.dataclass(frozen=True)
class Ready:
    connected: int
    failed: int
    errors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Warm:
    pass


@dataclasses.dataclass(frozen=True)
class Warmup:
    pass


@dataclasses.dataclass(frozen=True)
class Go:
    #: Wall-clock time (``time.time_ns()``) of the first publication.
    start_ns: int


@dataclasses.dataclass(frozen=True)
class Drain:
    #: Publications 0 .. sent-1 went out; wait for them until ``deadline_ns`` (wall clock).
    sent: int
    deadline_ns: int


@dataclasses.dataclass(frozen=True)
class Stop:
    pass


@dataclasses.dataclass(frozen=True)
class CpuUsage:
    """CPU seconds one generator process spent over wall seconds of the measured phase."""

    cpu_seconds: float
    wall_seconds: float

    @property
    def share(self) -> float:
        """Fraction of one core."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


class CpuClock:
    """Measures this process's CPU use from ``start()`` on."""

    def __init__(self) -> None:
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        times = os.times()
        self._cpu = times.user + times.system
        self._wall = time.monotonic()

    def usage(self) -> CpuUsage:
        times = os.times()
        return CpuUsage(times.user + times.system - self._cpu, time.monotonic() - self._wall)


class AsyncInbox:
    """Receives the parent's commands inside an event loop.

    A thread does the blocking ``recv``: registering the pipe with the loop (``add_reader``)
    would make it non-blocking under uvloop, and a large report would then fail to send.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._receive, name="inbox", daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = Stop()  # the parent is gone: stop
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, message)
            except RuntimeError:  # the loop is closed
                return
            if isinstance(message, Stop):
                return

    async def get(self) -> object:
        return await self._queue.get()

    def send(self, message: object) -> None:
        self._conn.send(message)
