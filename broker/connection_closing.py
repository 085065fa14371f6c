"""Closing a connection: requests, their bookkeeping, and the canonical ``connection.closed`` line.

Every server-initiated close goes through ``request_close``: the writer sends ``disconnect`` (on
``/v1/ws``) and the close frame within ``websocket.close_timeout``, and resets the socket if the
client does not take them. A write stuck for ``websocket.write_timeout`` marks a slow consumer,
and so does an outbox overflow (docs/protocol.md, close code 4008). What the connection ended
with (code, reason) is recorded here for the one log line written when it closes.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import anyio
import structlog

from broker.connection_encoding import FrameEncoder
from broker.connection_state import CloseRequest
from broker.logs import get_logger
from broker.transport import ClientGone
from protocol import CLOSE_REASONS, RECONNECT_CODES, CloseCode, Disconnect, Frame

log = get_logger("broker.connection")


class Closing(FrameEncoder):
    """How a connection asks to close, records why it closed, and logs it."""

    __slots__ = ()

    def request_close(
        self,
        code: CloseCode,
        *,
        reconnect: bool | None = None,
        retry_after: float = 0.0,
        flush: bool = False,
        reason: str | None = None,
    ) -> None:
        """Ask the writer to close the connection with ``code``; the first request wins.

        ``reconnect`` defaults to what docs/protocol.md advises for ``code`` (``RECONNECT_CODES``);
        ``reason`` to the code's usual one (``CLOSE_REASONS``); a close frame carries at most
        123 bytes of it.
        """
        if reconnect is None:
            reconnect = code in RECONNECT_CODES
        if self.close_request is None:
            text = (
                CLOSE_REASONS[code]
                if reason is None
                else reason.encode()[:123].decode(errors="ignore")
            )
            self.close_request = CloseRequest(int(code), text, reconnect, retry_after, flush)
            self.outbox.interrupt()
            if not flush:
                self._interrupt_write()

    def _interrupt_write(self) -> None:
        if self.write_scope is not None:
            self.write_scope.cancel()
        if self._write_timer is not None:
            # Waiting for the socket, without a task: stop waiting and look at the state now.
            self._write_timer.cancel()
            self._write_timer = None
            asyncio.get_running_loop().call_soon(self._service, context=self._context)

    def drain(self) -> None:
        """Server shutdown: flush, then ``disconnect`` (reconnect) and close 1001."""
        # Spread reconnections over the next seconds so that clients do not all come back at once.
        spread = self.settings.limits.retry_after
        retry_after = round(secrets.randbelow(1000) / 1000 * spread, 3)
        self.request_close(
            CloseCode.GOING_AWAY, reconnect=True, retry_after=retry_after, flush=True
        )

    def _close_notice(self, code: int, reason: str) -> tuple[bytes, bool] | None:
        """The ``disconnect`` to send before a close made by the frame parser (1009 and co)."""
        self.close_code, self.close_reason = code, reason or "protocol error"
        if self.codec is None:
            return None
        notice = Disconnect(code=code, reason=self.close_reason, reconnect=False)
        return self.codec.encode(notice), self.codec.text

    def client_closed(self, code: int, reason: str = "") -> None:
        """Record that the client closed (or lost) the connection."""
        if self.close_code is None:
            self.close_code = code
            # 1012 comes from an ASGI server that shut down without the broker's transport to
            # drain the connection first (a host app under plain uvicorn): not the client's doing.
            self.close_reason = reason or ("server shutdown" if code == 1012 else "client closed")

    def closing_frames(self, request: CloseRequest) -> list[Frame]:
        """What goes out before the close frame: the queue (on a drain), then ``disconnect``."""
        frames = self.take_frames() if request.flush else []
        if self.codec is not None:
            notice = Disconnect(
                code=request.code,
                reason=request.reason,
                reconnect=request.reconnect,
                retry_after=request.retry_after,
            )
            frames.append(Frame(self.codec.encode(notice)))
        return frames

    def write_timed_out(self) -> None:
        """A write stayed stuck for ``write_timeout``: drop the slow consumer now."""
        self._slow_consumer("write_timeout")
        self._abort(CloseCode.SLOW_CONSUMER)

    def overflowed(self) -> None:
        """The outbox overflowed (or the replies held back overflowed it): ask for 4008."""
        if self.close_request is None:
            self._slow_consumer(self.overflow_cause)
            self.request_close(CloseCode.SLOW_CONSUMER)

    def _abort(self, code: CloseCode) -> None:
        self.close_code, self.close_reason = int(code), CLOSE_REASONS[code]
        self.outbox.close()
        self.sink.abort()

    def _slow_consumer(self, cause: str) -> None:
        self.slow_consumer = cause
        statistics = self.outbox.statistics()
        log.warning(
            "connection.slow_consumer",
            cause=cause,
            # What was waiting when it was dropped (the hub may have released it already).
            queued_messages=max(statistics.queued_messages, statistics.released_messages),
            queued_bytes=max(statistics.queued_bytes, statistics.released_bytes),
            transport_buffered=0 if self.link is None else self.link.buffered_bytes(),
        )

    async def _close_after_failure(self) -> None:
        self.close_code, self.close_reason = int(CloseCode.INTERNAL_ERROR), "internal error"
        with anyio.move_on_after(self.settings.websocket.close_timeout) as scope:
            try:
                await self.sink.close(CloseCode.INTERNAL_ERROR, "internal error")
            except ClientGone:
                return
        if scope.cancelled_caught:
            self.sink.abort()

    def _log_closed(self) -> None:
        stats = self.stats
        log.info(
            "connection.closed",
            remote=self.remote,
            endpoint=self.endpoint,
            duration=round(time.monotonic() - self.started, 3),
            messages_in=stats.messages_in,
            bytes_in=stats.bytes_in,
            messages_out=stats.messages_out,
            bytes_out=stats.bytes_out,
            protocol_errors=stats.protocol_errors,
            code=self.close_code,
            reason=self.close_reason,
        )
        structlog.contextvars.unbind_contextvars("client", "user")
