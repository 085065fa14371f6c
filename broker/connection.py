"""One WebSocket connection: a reader task and a writer task in one task group.

The reader turns frames into hub commands (or answers them itself); the writer moves frames from
the connection's bounded ``Outbox`` to the socket, everything queued per wake-up, in one write.
When either task ends, the task group cancels the other; the hub then forgets the connection and
the outbox is closed, so nothing is left behind.

Every server-initiated close goes through ``request_close``: the writer sends ``disconnect`` (on
``/v1/ws``) and the close frame within ``websocket.close_timeout``, and resets the socket if the
client does not take them. A write stuck for ``websocket.write_timeout`` marks a slow consumer,
and so does an outbox overflow (PROTOCOL.md close code 4008).

One canonical log line is written when the connection closes (``connection.closed``).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from starlette.websockets import WebSocket

from broker.hub import DetachCommand, Hub, Subscriber
from broker.logs import get_logger
from broker.outbox import Outbox
from broker.settings import Settings
from broker.transport import (
    TRANSPORT_EXTENSION,
    AsgiFrameSink,
    ClientGone,
    FrameSink,
    TransportFrameSink,
    TransportLink,
)
from protocol import CLOSE_REASONS, CloseCode, Codec, Disconnect, Encoding, Frame, Gap

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

    def __init__(
        self,
        websocket: WebSocket,
        *,
        hub: Hub,
        settings: Settings,
        codec: Codec | None,
        endpoint: str,
        client_id: str | None = None,
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
        self._write_scope: anyio.CancelScope | None = None
        encoding: Encoding | None = None if codec is None else codec.encoding
        self.subscriber = Subscriber(id=self.id, encoding=encoding, outbox=self.outbox)
        self.stats = ConnectionStatistics()
        self.started = time.monotonic()
        self.close_request: CloseRequest | None = None
        #: Why the client was dropped as a slow consumer, if it was.
        self.slow_consumer: str | None = None
        #: The close code and reason the connection ended with, for the canonical log line.
        self.close_code: int | None = None
        self.close_reason = ""
        self.remote = _remote(websocket)
        link = websocket.scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self.link: TransportLink | None = link if isinstance(link, TransportLink) else None
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
        reconnect: bool = False,
        retry_after: float = 0.0,
        flush: bool = False,
    ) -> None:
        """Ask the writer to close the connection with ``code``; the first request wins."""
        if self.close_request is None:
            self.close_request = CloseRequest(
                int(code), CLOSE_REASONS[code], reconnect, retry_after, flush
            )
            self.outbox.interrupt()
            if not flush:
                self._interrupt_write()

    def _interrupt_write(self) -> None:
        if self._write_scope is not None:
            self._write_scope.cancel()

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

        With ``heartbeat``, a client silent for that long is closed with 4009 (PROTOCOL.md,
        "Liveness"). Frames arriving after a close was requested are read and dropped, so that the
        client's close reply is still seen.
        """
        receive = self.websocket.receive
        stats = self.stats
        max_bytes = self.settings.websocket.max_message_bytes
        if heartbeat is None:
            deadline = math.inf
        else:
            deadline = anyio.current_time() + heartbeat
        # Moving a deadline reschedules a timer: do it at most about once a second.
        slack = 0.0 if heartbeat is None else min(1.0, heartbeat / 10)
        with anyio.CancelScope(deadline=deadline) as silence:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    self.client_closed(message.get("code", 1005), message.get("reason") or "")
                    return
                if heartbeat is not None:
                    now = anyio.current_time()
                    if now + heartbeat - silence.deadline > slack:
                        silence.deadline = now + heartbeat
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
        if silence.cancelled_caught:
            log.info("connection.heartbeat_timeout", heartbeat=heartbeat)
            self.request_close(CloseCode.HEARTBEAT_TIMEOUT)
            # Keep reading (and dropping) until the close handshake ends or the writer gives up.
            await self.receive_loop(_ignore, _ignore)

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, reader: Callable[[], Awaitable[None]]) -> None:
        """Run ``reader`` and the writer until either ends, then clean up. The socket is
        accepted already."""
        structlog.contextvars.bind_contextvars(client=self.id)
        log.info("connection.opened", remote=self.remote, endpoint=self.endpoint)
        if self.link is not None:
            self.link.on_shutdown = self.drain
            self.link.close_notice = self._close_notice
        try:
            async with anyio.create_task_group() as tasks:

                async def run_then_cancel(task: Callable[[], Awaitable[None]]) -> None:
                    try:
                        await task()
                    finally:
                        tasks.cancel_scope.cancel()

                tasks.start_soon(run_then_cancel, reader)
                tasks.start_soon(run_then_cancel, self._write)
        finally:
            self.outbox.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.hub.submit(DetachCommand(self.subscriber))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass  # The hub has stopped: there is nothing left to forget us in.
            self._log_closed()

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
            self.close_reason = reason or "client closed"

    # --- the writer -----------------------------------------------------------------------------

    async def _write(self) -> None:
        outbox = self.outbox
        write_timeout = self.settings.websocket.write_timeout
        while True:
            await outbox.wait_ready()
            if outbox.overflowed:
                self._slow_consumer("outbox_full")
                self.request_close(CloseCode.SLOW_CONSUMER)
            request = self.close_request
            if request is not None:
                await self._close(request)
                return
            if outbox.closed:
                return
            # Let every task that is ready run first (the hub finishing a burst of commands):
            # what they queue goes out in the same write, one syscall for all of it.
            await anyio.lowlevel.checkpoint()
            frames = self._take_frames()
            if not frames:
                continue
            try:
                with anyio.CancelScope() as self._write_scope, anyio.fail_after(write_timeout):
                    await self._write_frames(frames)
                # When cancelled, the frames were not written (the only wait comes before the
                # write itself): the loop goes on to the overflow or close that cancelled it.
                self._write_scope = None
            except TimeoutError:
                self._slow_consumer("write_timeout")
                self._abort(CloseCode.SLOW_CONSUMER)
                return
            except ClientGone:
                self.client_closed(1006, "connection lost")
                return

    def _take_frames(self) -> list[Frame]:
        outbox = self.outbox
        frames: list[Frame] = []
        codec = self.codec
        skipped = outbox.take_skipped()
        if skipped and codec is not None:
            # The gaps come first: they stand where the dropped publications stood.
            frames.extend(
                Frame(codec.encode(Gap(channel=s.channel, from_offset=s.first, to_offset=s.last)))
                for s in skipped
            )
        frames.extend(outbox.drain())
        return frames

    async def _write_frames(self, frames: list[Frame]) -> None:
        stats = self.stats
        stats.messages_out += len(frames)
        codec = self.codec
        if codec is None:
            await self._write_plain(frames)
            return
        # ``/v1/ws``: up to ``max_batch`` messages per frame, every frame in one write.
        batch_size = self.settings.queue.max_batch
        batches = [
            codec.batch([frame.data for frame in frames[i : i + batch_size]])
            for i in range(0, len(frames), batch_size)
        ]
        stats.bytes_out += sum(map(len, batches))
        await self.sink.write(batches, text=codec.text)

    async def _write_plain(self, frames: list[Frame]) -> None:
        """Plain endpoints: one WebSocket frame per message, a run of one kind per write."""
        start = 0
        for end in range(1, len(frames) + 1):
            if end == len(frames) or frames[end].binary != frames[start].binary:
                run = [frame.data for frame in frames[start:end]]
                self.stats.bytes_out += sum(map(len, run))
                await self.sink.write(run, text=not frames[start].binary)
                start = end

    async def _close(self, request: CloseRequest) -> None:
        """Carry out ``request`` within ``close_timeout``; reset the socket if that fails."""
        self.close_code, self.close_reason = request.code, request.reason
        with anyio.move_on_after(self.settings.websocket.close_timeout) as scope:
            try:
                frames = self._take_frames() if request.flush else []
                if self.codec is not None:
                    notice = Disconnect(
                        code=request.code,
                        reason=request.reason,
                        reconnect=request.reconnect,
                        retry_after=request.retry_after,
                    )
                    frames.append(Frame(self.codec.encode(notice)))
                if frames:
                    await self._write_frames(frames)
                await self.sink.close(request.code, request.reason)
            except ClientGone:
                return
        if scope.cancelled_caught:
            self.sink.abort()

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
            queued_messages=statistics.queued_messages,
            queued_bytes=statistics.queued_bytes,
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
        structlog.contextvars.unbind_contextvars("client")


async def _ignore(_: object) -> None:
    pass


def _remote(websocket: WebSocket) -> str | None:
    client = websocket.client
    return None if client is None else f"{client.host}:{client.port}"
