"""One WebSocket connection: its state, put together from one-job parts, and its lifetime.

The reader (``broker.connection_reader``) turns frames into hub commands (or answers them
itself); it runs in the task the server runs the app in. The writer moves frames from the
connection's bounded ``Outbox`` to the socket, everything queued per wake-up, in one write
(``broker.connection_encoding``). Under ``broker serve`` (the ``TransportLink`` fast path) the
writer is a set of callbacks without a task (``broker.link_writer``). Without ``TransportLink``
(another ASGI server, or uvicorn without ``BrokerWebSocketProtocol``) the writer is a task beside
the reader in one task group (``broker.asgi_writer``).

Every server-initiated close goes through ``request_close`` (``broker.connection_closing``). When
the writer closes or resets the socket, the server hands the reader a disconnect, and the reader
ends; cleanup (``Connection.run``) then closes the outbox and the hub forgets the connection, so
nothing is left behind. One canonical log line is written when the connection closes
(``connection.closed``).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from starlette.websockets import WebSocket

from broker.asgi_writer import AsgiWriter
from broker.connection_encoding import FrameEncoder
from broker.connection_reader import Reader
from broker.connection_state import CloseRequest, ConnectionStatistics, new_client_id
from broker.flusher import FlushScheduler
from broker.handshake_memory import forget_handshake
from broker.hub import DetachCommand, Hub, Subscriber
from broker.link_writer import LinkWriter
from broker.logs import get_logger
from broker.monitor.instruments import PLAIN
from broker.outbox import Outbox
from broker.settings import Settings
from broker.transport import (
    TRANSPORT_EXTENSION,
    AsgiFrameSink,
    TransportFrameSink,
    TransportLink,
)
from protocol import Codec, Encoding, Frame

__all__ = ["CloseRequest", "Connection", "ConnectionStatistics", "new_client_id"]

log = get_logger("broker.connection")


class Connection(Reader, LinkWriter):
    """The state and the writer shared by every endpoint; the reader is the endpoint's own."""

    # The slots are ``ConnectionState``'s: the parts add none.
    __slots__ = ()

    def __init__(
        self,
        websocket: WebSocket,
        *,
        hub: Hub,
        settings: Settings,
        codec: Codec | None,
        endpoint: str,
        client_id: str | None = None,
        flusher: FlushScheduler | None = None,
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.settings = settings
        #: The wire codec on ``/v1/ws``; None on the plain endpoints, whose frames are text.
        self.codec = codec
        self.text = codec is None or codec.text
        self.endpoint = endpoint
        self.id = client_id or new_client_id()
        queue = settings.queue
        self.outbox = Outbox(
            max_messages=queue.max_messages, max_bytes=queue.max_bytes, policy=queue.overflow
        )
        self.outbox.on_overflow = self._interrupt_write
        #: The scope of the write in progress, cancelled when the client is to be dropped anyway.
        self.write_scope = None
        #: Without a writer task (the ``TransportLink`` path): the deadline of the wait for the
        #: socket to take more, and the context (``client`` bound for logs) callbacks run in.
        self._write_timer = None
        self._context = None
        #: The reader's heartbeat (``receive_loop``), when the client was last heard, and the
        #: bucket of the process's sweep the check is in (``broker.heartbeats``).
        self._heartbeat = 0.0
        self._last_heard = 0.0
        self.sweep_tick = None
        encoding: Encoding | None = None if codec is None else codec.encoding
        #: The delivery latency histogram of this connection's encoding (``encode``).
        self._latency = (
            hub.instruments.latency(
                PLAIN if encoding is None else encoding.name.lower(),
                settings.monitor.delivery_latency_every,
            )
            if settings.monitor.delivery_latency
            else None
        )
        self.subscriber = Subscriber(id=self.id, encoding=encoding, outbox=self.outbox)
        self.stats = ConnectionStatistics()
        self.started = time.monotonic()
        self.close_request = None
        #: Why the client was dropped as a slow consumer, if it was.
        self.slow_consumer = None
        #: What an overflow of the outbox means: ``outbox_full``, or ``replies_blocked`` when
        #: it was the protocol's own replies (pongs) the socket could not take.
        self.overflow_cause = "outbox_full"
        #: The close code and reason the connection ended with, for the canonical log line.
        self.close_code = None
        self.close_reason = ""
        self.remote = _remote(websocket)
        client = websocket.client
        #: The client's address (``X-Forwarded-For`` from a trusted proxy), for per-IP limits.
        self.address = None if client is None else client.host
        link = websocket.scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self.link = link if isinstance(link, TransportLink) else None
        if self.link is not None:
            # Frames leave from the flusher's turn when the socket takes them at once.
            self.outbox.write_through = self._write_through
            self.outbox.flusher = flusher
            # A publication or a reply for an idle connection goes straight to its socket
            # (``write_now``), as it is: not for a subclass that renders frames its own way on
            # their way out (``CentrifugoConnection.encode``).
            cls = type(self)
            if cls.encode is FrameEncoder.encode and cls.take_frames is FrameEncoder.take_frames:
                self.link.direct(self.stats, self._latency, text=self.text)
                self.outbox.writer = self.link
        self.sink = (
            TransportFrameSink(self.link, websocket.send)
            if self.link is not None
            else AsgiFrameSink(websocket.send)
        )
        self._log_budget = settings.log.max_protocol_errors_logged
        self._take = None

    # --- used by readers ------------------------------------------------------------------------

    def send_frame(self, data: bytes, *, binary: bool = False) -> bool:
        """Queue one frame made by the connection itself (a reply, an echo). Never waits."""
        return self.outbox.offer(Frame(data, None, 0, binary))

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, reader: Callable[[], Awaitable[None]]) -> None:
        """Run ``reader`` and the writer until either ends, then clean up. The socket is
        accepted already."""
        structlog.contextvars.bind_contextvars(client=self.id)
        log.debug("connection.opened", remote=self.remote, endpoint=self.endpoint)
        if self.codec is None:
            # The plain endpoints read the handshake's headers while admitting it, not since;
            # ``/v1/ws`` lets go of them once it has looked for a token (``V1Reader.run``).
            forget_handshake(self.websocket)
        link = self.link
        try:
            if link is not None:
                # No writer task: the outbox, the socket's writability and timers call the writer
                # (``_service``) when there is something to do. The reader ends when the client
                # closes or the socket is lost or reset: uvicorn then hands it a disconnect.
                self._context = contextvars.copy_context()
                link.on_shutdown = self.drain
                link.close_notice = self._close_notice
                link.on_writable = self._on_writable
                link.on_reply_blocked = self._reply_blocked
                self.outbox.call_when_ready(self._service, self._context)
                await reader()
            else:
                async with anyio.create_task_group() as tasks:

                    async def run_then_cancel(task: Callable[[], Awaitable[None]]) -> None:
                        try:
                            await task()
                        finally:
                            tasks.cancel_scope.cancel()

                    tasks.start_soon(run_then_cancel, reader)
                    tasks.start_soon(run_then_cancel, AsgiWriter(self).run)
        except Exception:
            # A bug, not the client's doing: log it whole, tell the client 1011 (docs/protocol.md
            # close codes) without a traceback, and clean up as for any other end.
            log.exception("connection.failed")
            await self._close_after_failure()
        finally:
            if link is not None:
                link.on_writable = None
                link.on_shutdown = None
                link.on_reply_blocked = None
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            self.outbox.close()
            await self._detach()
            self._log_closed()

    async def _detach(self) -> None:
        """Have the hub forget this connection: at once when it holds no channel
        (``Hub.detach_unsubscribed``), else through the mailbox. There is almost always room:
        then nothing waits and no cancel scope is entered (two per connection, each asking
        asyncio for its loop and task again); a full mailbox is waited for, shielded, 5 s at
        most."""
        if self.hub.detach_unsubscribed(self.subscriber):
            return
        detach = DetachCommand(self.subscriber)
        try:
            try:
                self.hub.submit_nowait(detach)
            except anyio.WouldBlock:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self.hub.submit(detach)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # The hub has stopped: there is nothing left to forget us in.

    # --- the writer, without a task (TransportLink) ---------------------------------------------


def _remote(websocket: WebSocket) -> str | None:
    client = websocket.client
    return None if client is None else f"{client.host}:{client.port}"
