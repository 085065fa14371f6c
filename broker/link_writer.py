"""The writer of a connection served through ``TransportLink`` (``broker serve``): no task.

The writer is a set of callbacks: the outbox calls ``_service`` when frames arrive
(``call_when_ready``), the protocol when the socket takes more (``_on_writable``), and timers for
its deadlines. The flusher writes through (``_write_through``) when the socket takes everything at
once. An idle connection thus holds no writer state beyond a callback (memory per connection:
docs/design.md). Pongs the socket cannot take count against the outbox's bounds with what it
holds (``_reply_blocked``, set as ``TransportLink.on_reply_blocked``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker.connection_closing import Closing
from broker.connection_state import CloseRequest
from broker.transport import ClientGone
from protocol import CloseCode


class LinkWriter(Closing):
    """The writer's steps, called back by the outbox, the socket and timers."""

    __slots__ = ()

    def _service(self) -> None:
        """One step of the writer: called when the outbox has something for it (or overflowed,
        closed or was interrupted), when the socket takes more, and by the write deadline."""
        link = self.link
        assert link is not None
        outbox = self.outbox
        if link.disconnected:
            self.client_closed(1006, "connection lost")
            return
        if outbox.overflowed:
            self.overflowed()
        request = self.close_request
        if request is not None:
            self._close_now(request)
            return
        if outbox.closed:
            return
        if not link.writable_now():
            self._wait_writable(self.settings.websocket.write_timeout, self.write_timed_out)
            return
        try:
            for frames, text in self.encode(self.take_frames()):
                link.write_prepared(frames, text=text)
        except ClientGone:
            self.client_closed(1006, "connection lost")
            return
        outbox.call_when_ready(self._service, self._context)

    def _close_now(self, request: CloseRequest) -> None:
        """``_close`` without awaiting: the ``disconnect`` and close frame go out once the socket
        takes them, within ``close_timeout``; otherwise the socket is reset."""
        link = self.link
        assert link is not None
        self.close_code, self.close_reason = request.code, request.reason
        if not link.writable_now():
            if request.code == CloseCode.SLOW_CONSUMER or link.disconnected:
                # Nothing more reaches this client: reset it now rather than hold its buffers.
                link.abort()
                return
            self._wait_writable(self.settings.websocket.close_timeout, link.abort)
            return
        frames = self.closing_frames(request)
        try:
            for run, text in self.encode(frames) if frames else []:
                link.write_prepared(run, text=text)
            link.close(request.code, request.reason)
        except ClientGone:
            return

    def _wait_writable(self, timeout: float, on_timeout: Callable[[], None]) -> None:
        if self._write_timer is None:  # already waiting: the first deadline stands
            self._write_timer = asyncio.get_running_loop().call_later(
                timeout, self._wait_timed_out, on_timeout, context=self._context
            )

    def _wait_timed_out(self, on_timeout: Callable[[], None]) -> None:
        self._write_timer = None
        on_timeout()

    def _on_writable(self) -> None:
        # Called by the protocol from inside the transport's callback: write from the loop.
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
            asyncio.get_running_loop().call_soon(self._service, context=self._context)

    def _reply_blocked(self, replies: int, size: int) -> None:
        """The protocol held back ``replies`` pongs (``size`` bytes) since the socket last took
        everything: they count against the outbox's bounds with what it holds."""
        outbox = self.outbox
        queued = outbox.statistics()
        if (
            queued.queued_messages + replies > outbox.max_messages
            or queued.queued_bytes + size > outbox.max_bytes
        ):
            self.overflow_cause = "replies_blocked"
            outbox.overflow()

    def _write_through(self) -> bool:
        """Write everything queued now, in the flusher's turn, if the socket takes it at once.

        Returns False when the writer has to do it (socket busy, closing, or a plain ASGI sink).
        """
        link = self.link
        if link is None or self.close_request is not None or not link.writable_now():
            return False
        try:
            for frames, text in self.encode(self.take_frames()):
                link.write_prepared(frames, text=text)
        except ClientGone:
            self.client_closed(1006, "connection lost")
            return False
        return True
