"""The writer of a connection served without ``TransportLink``: a task beside the reader.

Under ``broker serve`` a connection's writer has no task (``broker.link_writer``: callbacks
from the outbox, the socket and timers). Mounted under another ASGI server there is no transport
to call back from, so ``AsgiWriter.run`` is a task in the connection's task group: it waits for
the outbox, writes everything queued through the connection's ``FrameSink`` within
``websocket.write_timeout``, and carries out closes within ``websocket.close_timeout``. Either
ending cancels the other (``Connection.run``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from broker.transport import ClientGone
from protocol import CloseCode, Frame

if TYPE_CHECKING:
    from broker.connection import CloseRequest, Connection


class AsgiWriter:
    """One connection's writer task."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def run(self) -> None:
        connection = self.connection
        outbox = connection.outbox
        link = connection.link
        while True:
            await outbox.wait_ready()
            if link is not None and link.disconnected:
                connection.client_closed(1006, "connection lost")
                return
            if outbox.overflowed:
                connection.overflowed()
            request = connection.close_request
            if request is not None:
                await self._close(request)
                return
            if outbox.closed:
                return
            runs = connection.encode(connection.take_frames())
            try:
                if link is not None and link.writable_now():
                    # The fast path: the socket takes it now, so no wait, no deadline, no
                    # cancel scope: one transport.write for everything.
                    for frames, text in runs:
                        link.write_prepared(frames, text=text)
                    continue
                if not await self._write_with_deadline(runs):
                    return
            except ClientGone:
                connection.client_closed(1006, "connection lost")
                return

    async def _write_with_deadline(self, runs: list[tuple[list[Frame], bool]]) -> bool:
        """Write once the socket takes it, within ``write_timeout``. False: the client is gone."""
        connection = self.connection
        try:
            with (
                anyio.CancelScope() as connection.write_scope,
                anyio.fail_after(connection.settings.websocket.write_timeout),
            ):
                for frames, text in runs:
                    await connection.sink.write([frame.data for frame in frames], text=text)
            # When cancelled (overflow, close request), the frames were not written: the only
            # wait comes before the write itself. The loop goes on to what cancelled it.
            connection.write_scope = None
            return True
        except TimeoutError:
            connection.write_timed_out()
            return False

    async def _close(self, request: CloseRequest) -> None:
        """Carry out ``request`` within ``close_timeout``; reset the socket if that fails."""
        connection = self.connection
        connection.close_code, connection.close_reason = request.code, request.reason
        link = connection.link
        sink = connection.sink
        if request.code == CloseCode.SLOW_CONSUMER and link is not None and not link.writable_now():
            # The socket takes nothing more: no ``disconnect`` could reach the client. Reset it
            # now rather than hold its buffers for another close_timeout.
            sink.abort()
            return
        with anyio.move_on_after(connection.settings.websocket.close_timeout) as scope:
            try:
                frames = connection.closing_frames(request)
                for run, text in connection.encode(frames) if frames else []:
                    await sink.write([frame.data for frame in run], text=text)
                await sink.close(request.code, request.reason)
            except ClientGone:
                return
        if scope.cancelled_caught:
            sink.abort()
