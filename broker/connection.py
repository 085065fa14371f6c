"""One WebSocket connection: the endpoint's reader, and a writer that needs no task of its own.

The reader turns frames into hub commands (or answers them itself); it runs in the task the
server runs the app in. The writer moves frames from the connection's bounded ``Outbox`` to the
socket, everything queued per wake-up, in one write. Under ``broker serve`` (the
``TransportLink`` fast path) the writer is a set of callbacks: the outbox calls it when frames
arrive (``call_when_ready``), the protocol when the socket takes more, and timers for its
deadlines. An idle connection thus holds one task and no writer state beyond a callback (memory
per connection: docs/design.md). Without ``TransportLink`` (another ASGI server, or uvicorn
without ``BrokerWebSocketProtocol``) the writer is a task beside the reader in one task group
(``broker.asgi_writer``).

Every server-initiated close goes through ``request_close``: the writer sends ``disconnect`` (on
``/v1/ws``) and the close frame within ``websocket.close_timeout``, and resets the socket if the
client does not take them. A write stuck for ``websocket.write_timeout`` marks a slow consumer,
and so does an outbox overflow (docs/protocol.md, close code 4008), and so do pongs the socket
cannot take once they count past the outbox's bounds with what it holds
(``TransportLink.on_reply_blocked``). When the writer closes or resets the socket, the server
hands the reader a disconnect, and the reader ends; cleanup then closes the outbox and the hub
forgets the connection, so nothing is left behind.

One canonical log line is written when the connection closes (``connection.closed``).
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from starlette.websockets import WebSocket

from broker.asgi_writer import AsgiWriter
from broker.hub import DetachCommand, Hub, Subscriber
from broker.logs import get_logger
from broker.monitor.instruments import PLAIN
from broker.outbox import FlushScheduler, Outbox
from broker.settings import Settings
from broker.transport import (
    TRANSPORT_EXTENSION,
    AsgiFrameSink,
    ClientGone,
    FrameSink,
    TransportFrameSink,
    TransportLink,
)
from protocol import (
    CLOSE_REASONS,
    RECONNECT_CODES,
    CloseCode,
    Codec,
    Disconnect,
    Encoding,
    Frame,
    Gap,
)

log = get_logger("broker.connection")


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """A server-initiated close, as the writer will carry it out."""

    code: int
    reason: str
    reconnect: bool = False
    retry_after: float = 0.0
    #: Send what is already queued first (a graceful drain); otherwise drop it.
    flush: bool = False


@dataclass(slots=True)
class ConnectionStatistics:
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    protocol_errors: int = 0


def new_client_id() -> str:
    """A client id: 72 random bits, URL-safe, 12 characters."""
    return secrets.token_urlsafe(9)


class Connection:
    """The state and the writer shared by every endpoint; the reader is the endpoint's own."""

    # Slots: one of these lives as long as each connection (memory per connection).
    __slots__ = (
        "_context",
        "_heartbeat_timer",
        "_last_heard",
        "_latency",
        "_log_budget",
        "_write_timer",
        "address",
        "close_code",
        "close_reason",
        "close_request",
        "codec",
        "endpoint",
        "hub",
        "id",
        "link",
        "outbox",
        "overflow_cause",
        "remote",
        "settings",
        "sink",
        "slow_consumer",
        "started",
        "stats",
        "subscriber",
        "text",
        "websocket",
        "write_scope",
    )

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
        self.write_scope: anyio.CancelScope | None = None
        #: Without a writer task (the ``TransportLink`` path): the deadline of the wait for the
        #: socket to take more, and the context (``client`` bound for logs) callbacks run in.
        self._write_timer: asyncio.TimerHandle | None = None
        self._context: contextvars.Context | None = None
        #: The reader's heartbeat check (``receive_loop``) and when the client was last heard.
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        encoding: Encoding | None = None if codec is None else codec.encoding
        #: The delivery latency histogram of this connection's encoding (``encode``).
        self._latency = (
            hub.instruments.latency(PLAIN if encoding is None else encoding.name.lower())
            if settings.monitor.delivery_latency
            else None
        )
        self.subscriber = Subscriber(id=self.id, encoding=encoding, outbox=self.outbox)
        self.stats = ConnectionStatistics()
        self.started = time.monotonic()
        self.close_request: CloseRequest | None = None
        #: Why the client was dropped as a slow consumer, if it was.
        self.slow_consumer: str | None = None
        #: What an overflow of the outbox means: ``outbox_full``, or ``replies_blocked`` when
        #: it was the protocol's own replies (pongs) the socket could not take.
        self.overflow_cause = "outbox_full"
        #: The close code and reason the connection ended with, for the canonical log line.
        self.close_code: int | None = None
        self.close_reason = ""
        self.remote = _remote(websocket)
        client = websocket.client
        #: The client's address (``X-Forwarded-For`` from a trusted proxy), for per-IP limits.
        self.address = None if client is None else client.host
        link = websocket.scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self.link: TransportLink | None = link if isinstance(link, TransportLink) else None
        if self.link is not None:
            # Frames leave from the flusher's turn when the socket takes them at once.
            self.outbox.write_through = self._write_through
            self.outbox.flusher = flusher
        self.sink: FrameSink = (
            TransportFrameSink(self.link, websocket.send)
            if self.link is not None
            else AsgiFrameSink(websocket.send)
        )
        self._log_budget = settings.log.max_protocol_errors_logged

    # --- used by readers ------------------------------------------------------------------------

    def send_frame(self, data: bytes, *, binary: bool = False) -> bool:
        """Queue one frame made by the connection itself (a reply, an echo). Never waits."""
        return self.outbox.offer(Frame(data, binary=binary))

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

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, reader: Callable[[], Awaitable[None]]) -> None:
        """Run ``reader`` and the writer until either ends, then clean up. The socket is
        accepted already."""
        structlog.contextvars.bind_contextvars(client=self.id)
        log.debug("connection.opened", remote=self.remote, endpoint=self.endpoint)
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
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.hub.submit(DetachCommand(self.subscriber))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass  # The hub has stopped: there is nothing left to forget us in.
            self._log_closed()

    async def _close_after_failure(self) -> None:
        self.close_code, self.close_reason = int(CloseCode.INTERNAL_ERROR), "internal error"
        with anyio.move_on_after(self.settings.websocket.close_timeout) as scope:
            try:
                await self.sink.close(CloseCode.INTERNAL_ERROR, "internal error")
            except ClientGone:
                return
        if scope.cancelled_caught:
            self.sink.abort()

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

    # --- the writer, without a task (TransportLink) ---------------------------------------------

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

    def write_timed_out(self) -> None:
        """A write stayed stuck for ``write_timeout``: drop the slow consumer now."""
        self._slow_consumer("write_timeout")
        self._abort(CloseCode.SLOW_CONSUMER)

    def overflowed(self) -> None:
        """The outbox overflowed (or the replies held back overflowed it): ask for 4008."""
        if self.close_request is None:
            self._slow_consumer(self.overflow_cause)
            self.request_close(CloseCode.SLOW_CONSUMER)

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

    def take_frames(self) -> list[Frame]:
        outbox = self.outbox
        skipped = outbox.take_skipped()
        frames = outbox.drain()
        codec = self.codec
        if skipped and codec is not None:
            self.hub.instruments.gap_messages += len(skipped)
            # The gaps come first: they stand where the dropped publications stood.
            gaps = [
                Frame(codec.encode(Gap(channel=s.channel, from_offset=s.first, to_offset=s.last)))
                for s in skipped
            ]
            frames = gaps + frames
        return frames

    def observe_latency(self, frames: list[Frame]) -> None:
        """Delivery latency (metrics, unless ``monitor.delivery_latency`` is off): the age of the
        oldest publication in this write."""
        latency = self._latency
        if latency is not None:
            for frame in frames:
                if frame.accepted:
                    latency.observe(time.monotonic() - frame.accepted)
                    break

    def encode(self, frames: list[Frame]) -> list[tuple[list[Frame], bool]]:
        """WebSocket messages for ``frames``, as runs of one kind (text or binary).

        On ``/v1/ws`` several messages are packed into batch frames of at most
        ``queue.max_batch`` messages and about ``queue.max_batch_bytes`` bytes (a lone larger
        message goes alone; a lone message keeps its shared ``Frame``). On the plain endpoints
        each message is a frame of its own.
        """
        stats = self.stats
        stats.messages_out += len(frames)
        self.observe_latency(frames)
        codec = self.codec
        if codec is None:
            runs: list[tuple[list[Frame], bool]] = []
            for frame in frames:
                if runs and runs[-1][1] == (not frame.binary):
                    runs[-1][0].append(frame)
                else:
                    runs.append(([frame], not frame.binary))
                stats.bytes_out += len(frame.data)
            return runs
        if len(frames) == 1:
            stats.bytes_out += len(frames[0].data)
            return [(frames, codec.text)]
        queue = self.settings.queue
        batches: list[Frame] = []
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            data = frame.data
            if batch and (
                len(batch) >= queue.max_batch or size + len(data) > queue.max_batch_bytes
            ):
                batches.append(Frame(codec.batch(batch)))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        if batch:
            batches.append(Frame(codec.batch(batch)))
        stats.bytes_out += sum(len(frame.data) for frame in batches)
        return [(batches, codec.text)]

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


def _remote(websocket: WebSocket) -> str | None:
    client = websocket.client
    return None if client is None else f"{client.host}:{client.port}"
