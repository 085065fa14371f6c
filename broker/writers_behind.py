"""Whether a writer task needs a turn of the loop: ``WRITERS_BEHIND``.

Without the transport's link (the broker's app under plain uvicorn, or any server but
``broker serve``) a connection's writer is a task and its outbox cannot write through. What one
turn of the loop queues for it (a publisher's burst fanned out, the replies to a burst of
requests, a read from Redis that brought many publications) then leaves only once that turn
ends. An outbox that reaches half of its bound that way sets ``WRITERS_BEHIND.wanted``
(``Outbox.offer``), and the loop that fed it lets the loop turn before its next item
(``let_writers_run``): a connection's reader (``Reader.receive_loop``) and the Redis
backplane's readers (plain pub/sub and a cluster's ``ShardReaders``). So a client that reads is
not dropped for the size of a burst (4008), only for not reading. Under ``broker serve``
outboxes write through themselves and nothing sets it. (The hub's own mailbox loop does not look:
commands reach it by hand-over, in their sender's turn, except while it is busy.)
"""

from __future__ import annotations

import asyncio


class WritersBehind:
    """The flag, one per process (``WRITERS_BEHIND``)."""

    __slots__ = ("wanted",)

    def __init__(self) -> None:
        self.wanted = False


WRITERS_BEHIND = WritersBehind()


async def let_writers_run() -> None:
    """Clear the flag and let the loop turn once, so that the writer tasks woken meanwhile run.
    Called only when ``WRITERS_BEHIND.wanted`` is set: a check per item, a coroutine rarely."""
    WRITERS_BEHIND.wanted = False
    await asyncio.sleep(0)
