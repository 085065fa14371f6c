"""The hub's mailbox: a bounded, ordered queue of commands with one receiver, the hub's task.

It does what the hub used of an anyio memory object stream, at a fraction of the cost per
command: ``receive`` on an anyio stream yields to the loop first (a checkpoint: one more turn of
the loop per wake-up of the hub) and, when the stream is empty, makes an ``Event``, a receiver
record and their entries in a dict and a set, with backend look-ups for each; the hub is woken
for nearly every publication at moderate rates (docs/performance.md). Here an idle receiver
waits on one future, made when it has to wait and set by the sender that fills the mailbox.

The semantics are the stream's, as the hub relies on them:

* ``send_nowait`` raises ``anyio.WouldBlock`` while the mailbox is full, and while senders wait
  for room (so that order is kept: a newcomer waits behind them); ``send`` waits for room, first
  come first served; ``offer`` is ``send_nowait`` answering with a bool instead (no exception for
  the usual answer, as ``poll``);
* ``receive_nowait`` raises ``anyio.WouldBlock`` when it is empty (``poll`` returns None
  instead: no exception for the usual answer); ``receive`` waits;
* after ``close``, senders get ``anyio.ClosedResourceError`` (the waiting ones too); the
  receiver gets what was queued, then ``anyio.EndOfStream``.

It is used on the event loop's thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A bounded queue of ``size`` items, one receiver. See the module docstring."""

    __slots__ = ("_closed", "_items", "_receiver", "_senders", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[T] = deque()
        self._closed = False
        #: What the idle receiver waits on, while it waits.
        self._receiver: asyncio.Future[None] | None = None
        #: Senders waiting for room, in order, each with its item.
        self._senders: deque[tuple[asyncio.Future[None], T]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def waiting(self) -> bool:
        """Whether the receiver is waiting on an empty mailbox: an item sent now would be the
        next it takes, with nothing before it."""
        receiver = self._receiver
        return receiver is not None and not receiver.done() and not self._items

    def offer(self, item: T) -> bool:
        """``send_nowait`` without the exception: whether ``item`` was queued (not while the
        mailbox is full or senders wait, nor once it is closed). The usual answer is yes."""
        if self._closed or len(self._items) >= self.size or self._senders:
            return False
        self._items.append(item)
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            if not receiver.done():
                receiver.set_result(None)
        return True

    def send_nowait(self, item: T) -> None:
        if not self.offer(item):
            raise anyio.ClosedResourceError if self._closed else anyio.WouldBlock

    async def send(self, item: T) -> None:
        if self.offer(item):
            return
        if self._closed:
            raise anyio.ClosedResourceError
        # Wait for room; ``_take_room`` moves the item in when there is.
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, item)
        self._senders.append(entry)
        try:
            await waiter  # raises ClosedResourceError if the mailbox is closed meanwhile
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                # Not moved in: out of the line it goes.
                try:
                    self._senders.remove(entry)
                except ValueError:
                    pass
            raise

    def _take_room(self) -> None:
        """Move waiting senders' items in while there is room."""
        senders = self._senders
        items = self._items
        while senders and len(items) < self.size:
            waiter, item = senders.popleft()
            if waiter.done():  # cancelled meanwhile
                continue
            items.append(item)
            waiter.set_result(None)

    def receive_nowait(self) -> T:
        item = self.poll()
        if item is None:
            if self._closed:
                raise anyio.EndOfStream
            raise anyio.WouldBlock
        return item

    def poll(self) -> T | None:
        """The next item, or None when there is none now (``receive_nowait`` without the
        exception: the hub asks once per wake-up whether more came, and the answer is usually
        no). Items must not be None."""
        items = self._items
        if not items:
            if not self._senders:
                return None
            self._take_room()
            if not items:
                return None
        item = items.popleft()
        if self._senders:
            self._take_room()
        return item

    async def receive(self) -> T:
        while True:
            item = self.poll()
            if item is not None:
                return item
            if self._closed:
                raise anyio.EndOfStream
            receiver = self._receiver = asyncio.get_running_loop().create_future()
            try:
                await receiver
            finally:
                if self._receiver is receiver:
                    self._receiver = None

    def close(self) -> None:
        """Refuse every later item; the receiver gets what is queued, then ``EndOfStream``."""
        if self._closed:
            return
        self._closed = True
        senders, self._senders = self._senders, deque()
        for waiter, _ in senders:
            if not waiter.done():
                waiter.set_exception(anyio.ClosedResourceError())
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            if not receiver.done():
                receiver.set_result(None)
