"""The reading half of a connection: frames to the endpoint's handlers, and the heartbeat.

``receive_loop`` runs in the task the server runs the app in; it hands each frame to the
endpoint's handlers, enforces ``websocket.max_message_bytes``, and with a heartbeat closes a
client silent for that long (4009). Bad frames are counted and logged a bounded number of times
(``protocol_error``).

Under ``broker serve`` (``broker.transport.BrokerWebSocketProtocol``) frames are taken from the
protocol's queue directly (``TransportLink.messages``), not through Starlette's
``WebSocket.receive`` and uvicorn's ``receive``, each a coroutine per message, a third for the
queue's ``get``: what those do on the way (resume reading once the queue is empty, the
WebSocket's ``client_state`` on ``websocket.disconnect``) is done here or in the protocol. When
anything wraps the ASGI ``receive`` (a middleware), or under another server, frames come through
``WebSocket.receive`` as before.

An endpoint that can handle some messages without waiting gives ``take_now``: then, while the
reader waits with nothing queued, the protocol offers it each message before queueing it
(``take_message``, in this connection's context), and what the endpoint cannot finish at once
it defers to this loop (``defer``), which awaits it in order (docs/design.md,
"Messages taken at once").
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from starlette.websockets import WebSocketState

from broker.connection_closing import Closing
from broker.heartbeats import sweep
from broker.logs import get_logger
from broker.transport_messages import DEFERRED
from broker.writers_behind import WRITERS_BEHIND, let_writers_run
from protocol import CloseCode

log = get_logger("broker.connection")

#: ``WebSocketState.DISCONNECTED``, looked up once (an ``Enum`` class attribute costs about 800
#: instructions on Python 3.11).
_DISCONNECTED = WebSocketState.DISCONNECTED


class Reader(Closing):
    """The reader's loop and its liveness check."""

    __slots__ = ()

    def protocol_error(self, event: str, **fields: Any) -> None:
        """Log a bad frame, at most ``log.max_protocol_errors_logged`` times per connection."""
        self.stats.protocol_errors += 1
        if self._log_budget > 0:
            self._log_budget -= 1
            log.warning(event, **fields)

    async def receive_loop(
        self,
        on_text: Callable[[str], Awaitable[None]],
        on_bytes: Callable[[bytes], Awaitable[None]],
        *,
        heartbeat: float | None = None,
        take_now: Callable[[str | None, bytes | None], bool] | None = None,
    ) -> None:
        """Read frames until the client leaves, handing each to ``on_text`` or ``on_bytes``.

        With ``heartbeat``, a client silent for that long is closed with 4009 (docs/protocol.md,
        "Liveness"). Frames arriving after a close was requested are read and dropped, so that the
        client's close reply is still seen. With ``take_now`` (and the protocol's queue read
        directly), a message arriving while this loop waits is offered to it first
        (``take_message``).
        """
        websocket = self.websocket
        receive = websocket.receive
        # Under ``broker serve`` the protocol's queue is read directly (``TransportLink.messages``),
        # doing what Starlette's ``receive`` would (below): no coroutine per message.
        source = None if self.link is None else self.link.messages(websocket._receive)
        stats = self.stats
        max_bytes = self.settings.websocket.max_message_bytes
        loop = asyncio.get_running_loop()
        # Under plain uvicorn what one message fans out or answers leaves only when this task
        # lets the writer tasks run: it does once an outbox is half full (``WRITERS_BEHIND``).
        behind = WRITERS_BEHIND
        heartbeats = None
        taking = source is not None and take_now is not None
        if self._context is None and (heartbeat is not None or taking):
            # The heartbeat check runs from the sweep's timer, and messages taken at once from
            # the protocol's callback: both in this task's context (logs' ``client``).
            self._context = contextvars.copy_context()
        if heartbeat is not None:
            # The process's sweep looks at when the client was last heard, once per heartbeat:
            # nothing is allocated or rescheduled per frame, and no timer is kept per connection
            # (``broker.heartbeats``).
            self._heartbeat = heartbeat
            self._last_heard = loop.time()
            heartbeats = sweep(heartbeat)
            heartbeats.schedule(self, self._last_heard + heartbeat)
        if taking:
            assert source is not None
            self._take = take_now
            source.take_now = self.take_message
        try:
            while True:
                if source is not None:
                    message = source.next_message()
                    while message is None:
                        await source.message_arrival()
                        message = source.next_message()
                else:
                    message = await receive()
                kind = message["type"]
                if kind == DEFERRED:
                    # The rest of a message taken at once: counted and heard already, and
                    # carried out even if a close was asked for since, as it was read before.
                    await message["then"]()
                    if behind.wanted:
                        await let_writers_run()
                    continue
                if kind == "websocket.disconnect":
                    if source is not None:
                        # As Starlette's ``receive`` does: nothing more can be read.
                        websocket.client_state = _DISCONNECTED
                    self.client_closed(message.get("code", 1005), message.get("reason") or "")
                    return
                if heartbeat is not None:
                    self._last_heard = loop.time()
                if self.close_request is not None:
                    continue
                text = message.get("text")
                stats.messages_in += 1
                if text is not None:
                    size = text_size(text, max_bytes)
                    stats.bytes_in += size
                    if size > max_bytes:
                        self.request_close(CloseCode.MESSAGE_TOO_BIG)
                        continue
                    await on_text(text)
                else:
                    data: bytes = message.get("bytes") or b""
                    stats.bytes_in += len(data)
                    if len(data) > max_bytes:
                        self.request_close(CloseCode.MESSAGE_TOO_BIG)
                        continue
                    await on_bytes(data)
                if behind.wanted:
                    await let_writers_run()
        finally:
            if taking:
                assert source is not None
                source.take_now = None
                self._take = None
            if heartbeats is not None:
                heartbeats.cancel(self)

    def take_message(self, text: str | None, data: bytes | None) -> bool:
        """One message offered by the protocol before it queues it, while ``receive_loop``
        waits with nothing queued: handed to the endpoint's ``take_now`` after the loop's own
        checks, and counted as the loop counts it. True when the endpoint took it (done, or
        deferred to the loop); False when the loop must see it (after a close was asked for,
        over the size limit, or declined by the endpoint), and then nothing was done.

        Run in this connection's context (logs' ``client``), not the protocol's. A failure is
        the loop's too: it is deferred to the loop, which raises it there, so the connection
        ends as for a failure in the loop (``connection.failed``, 1011)."""
        context = self._context
        assert context is not None  # set by ``receive_loop`` before it offers this
        # The context is entered here, per message, rather than by a ``functools.partial`` the
        # protocol would call: that partial and its arguments cost about 300 bytes for as
        # long as the connection lives.
        return context.run(self._take_message, text, data)

    def _take_message(self, text: str | None, data: bytes | None) -> bool:
        take = self._take
        if take is None or self.close_request is not None:
            return False
        max_bytes = self.settings.websocket.max_message_bytes
        if text is not None:
            size = text_size(text, max_bytes)
        else:
            size = len(data or b"")
        if size > max_bytes:
            return False
        try:
            if not take(text, data):
                return False
        except Exception as exc:
            self.defer(partial(_raise, exc))
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += size
        # The monotonic clock the loop's ``time()`` reads (uvloop: to the millisecond).
        self._last_heard = time.monotonic()
        return True

    def defer(self, then: Callable[[], Awaitable[None]]) -> None:
        """Have ``receive_loop`` await ``then`` in its task before any message read after now:
        the rest of a message the endpoint took at once (``take_now``) but cannot finish
        without waiting. Only while a message is being taken that way."""
        assert self.link is not None
        self.link.defer(then)

    def on_sweep(self, now: float) -> float | None:
        """The heartbeat check (``broker.heartbeats``): the next deadline while the client was
        heard within ``heartbeat``; otherwise close with 4009."""
        due = self._last_heard + self._heartbeat
        if now < due:
            return due
        if self.close_request is None:
            if self._context is not None:
                self._context.run(self._heartbeat_timed_out)
            else:  # pragma: no cover - receive_loop sets the context
                self._heartbeat_timed_out()
        return None

    def _heartbeat_timed_out(self) -> None:
        log.info("connection.heartbeat_timeout", heartbeat=self._heartbeat)
        # The reader goes on reading (and dropping) until the close handshake ends or the
        # writer gives up.
        self.request_close(CloseCode.HEARTBEAT_TIMEOUT)


def text_size(text: str, max_bytes: int) -> int:
    """The size ``text`` counts for, against ``max_bytes`` and in ``bytes_in``: its length in
    characters when even 4 bytes each would be within the limit (exact for ASCII), otherwise
    its UTF-8 length. Encoding is the cost avoided for nearly every message."""
    return len(text) if len(text) * 4 <= max_bytes else len(text.encode())


async def _raise(exc: Exception) -> None:
    raise exc
