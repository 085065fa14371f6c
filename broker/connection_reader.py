"""The reading half of a connection: frames to the endpoint's handlers, and the heartbeat.

``receive_loop`` runs in the task the server runs the app in; it hands each frame to the
endpoint's handlers, enforces ``websocket.max_message_bytes``, and with a heartbeat closes a
client silent for that long (4009). Bad frames are counted and logged a bounded number of times
(``protocol_error``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from broker.connection_closing import Closing
from broker.logs import get_logger
from protocol import CloseCode

log = get_logger("broker.connection")


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
    ) -> None:
        """Read frames until the client leaves, handing each to ``on_text`` or ``on_bytes``.

        With ``heartbeat``, a client silent for that long is closed with 4009 (docs/protocol.md,
        "Liveness"). Frames arriving after a close was requested are read and dropped, so that the
        client's close reply is still seen.
        """
        receive = self.websocket.receive
        stats = self.stats
        max_bytes = self.settings.websocket.max_message_bytes
        loop = asyncio.get_running_loop()
        if heartbeat is not None:
            # A timer that looks at when the client was last heard, not a deadline moved on
            # every message: nothing is allocated or rescheduled per frame.
            self._last_heard = loop.time()
            self._heartbeat_timer = loop.call_later(heartbeat, self._check_heartbeat, heartbeat)
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    self.client_closed(message.get("code", 1005), message.get("reason") or "")
                    return
                if heartbeat is not None:
                    self._last_heard = loop.time()
                if self.close_request is not None:
                    continue
                text = message.get("text")
                stats.messages_in += 1
                if text is not None:
                    # Characters are at most 4 bytes: encode only when it might be too long.
                    size = len(text) if len(text) * 4 <= max_bytes else len(text.encode())
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
        finally:
            if self._heartbeat_timer is not None:
                self._heartbeat_timer.cancel()
                self._heartbeat_timer = None

    def _check_heartbeat(self, heartbeat: float) -> None:
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_heard
        if silent < heartbeat:
            self._heartbeat_timer = loop.call_later(
                heartbeat - silent, self._check_heartbeat, heartbeat
            )
            return
        self._heartbeat_timer = None
        if self.close_request is None:
            log.info("connection.heartbeat_timeout", heartbeat=heartbeat)
            # The reader goes on reading (and dropping) until the close handshake ends or the
            # writer gives up.
            self.request_close(CloseCode.HEARTBEAT_TIMEOUT)
