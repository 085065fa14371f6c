"""Lighter stand-ins for what uvicorn's WebSocket protocol makes per connection: its logger
for ``websockets`` (without the info line per connection), its receive queue and its
writability event. Each connection keeps them for as long as it lives (docs/performance.md,
"Where the memory of a connection goes")."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from starlette.types import Message as AsgiMessage

__all__ = ["WIRE_LOGGER", "Flag", "ReceiveQueue", "WireLogger"]

_UVICORN_ERROR = logging.getLogger("uvicorn.error")


class WireLogger:
    """The logger ``websockets`` gets for a connection: ``uvicorn.error``, minus its ``info``
    ("connection open" for every connection; the broker logs one line per connection)."""

    __slots__ = ()

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(_UVICORN_ERROR, name)


WIRE_LOGGER = WireLogger()


class ReceiveQueue:
    """What uvicorn needs of its per-connection ``asyncio.Queue``, in a fraction of the memory.

    An ``asyncio.Queue`` holds three deques (about 2.5 KiB with its object) for the life of the
    connection; there is one reader, and messages rarely wait, so a deque made on demand and one
    future do. The loop is kept (given at construction) rather than asked of asyncio for every
    future: ``asyncio.get_running_loop()`` checks the process id, a system call, each time.

    ``pop`` and ``arrival`` are all the app's side needs (``ClientMessages.next_message`` and
    ``receive``, which replace uvicorn's ``receive`` and so its ``get``): one future per wait,
    and none when a message is queued already, instead of a coroutine per message.
    """

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: deque[AsgiMessage] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop

    def put_nowait(self, item: AsgiMessage) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def pop(self) -> AsgiMessage | None:
        """The next message, or None when none is queued."""
        items = self._items
        if not items:
            return None
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def arrival(self) -> asyncio.Future[None]:
        """A future that ends once a message is queued: what the one reader awaits while the
        queue is empty. (Cancelled, it is dropped by the next ``put_nowait`` or ``arrival``.)"""
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def empty(self) -> bool:
        return not self._items

    def reader_waiting(self) -> bool:
        """Whether the reader waits for a message with nothing queued (``arrival``): a message
        handled now instead of queued is then the one it would take next."""
        waiter = self._waiter
        return waiter is not None and not self._items and not waiter.done()

    def relabel_last_disconnect(self, code: int, reason: str) -> None:
        """Give the last queued ``websocket.disconnect`` message ``code`` and ``reason``."""
        if self._items and self._items[-1].get("type") == "websocket.disconnect":
            self._items[-1] = {**self._items[-1], "code": code, "reason": reason}


class Flag:
    """What uvicorn needs of its per-connection ``asyncio.Event`` (``writable``), without the
    deque of waiters an ``asyncio.Event`` keeps for the life of the connection."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
