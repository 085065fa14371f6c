"""Writing frames to a client's socket, with the fast path below ASGI where uvicorn allows it.

The hub's design pays off only when a writer hands the socket every queued frame in one write (one
syscall) and can cut a stuck client loose (docs/stack-findings.md). ASGI offers neither: ``send``
takes one message at a time, and nothing in it can abort a transport. So
``BrokerWebSocketProtocol``, a small subclass of uvicorn's websockets-sansio protocol, publishes
a ``TransportLink`` in the ASGI scope's ``extensions`` under ``"broker.transport"``:

* ``write_frames`` frames several messages with the same RFC 6455 framer uvicorn uses
  (``websockets``' ``ServerProtocol``) and writes them with one ``transport.write``;
* ``abort`` sets ``SO_LINGER`` (on, 0) and aborts the transport, so the kernel resets the socket
  and frees its buffers at once instead of lingering in FIN-WAIT-1 with megabytes queued;
* the transport's write buffer is capped at ``websocket.transport_buffer_bytes``, above which
  writers wait (``wait_writable``), so what one client can hold stays bounded.

Alternatives rejected: per-frame ASGI ``send`` (one trip through Starlette and uvicorn per
message: measured 50 µs/delivery against the tutorial's 33 µs); writing raw bytes to the
transport behind ``websockets``' back (it would break the protocol state machine's close
handling). Without the extension (the app mounted under another server), ``AsgiFrameSink`` falls
back to ASGI ``send``, and a stuck client is still dropped by the writer's deadline, just without
the socket reset.

Verified on uvicorn 0.54 with websockets 17.4 (pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from starlette.types import Message as AsgiMessage
from starlette.websockets import WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import State

from protocol import Frame

TRANSPORT_EXTENSION = "broker.transport"

#: Starlette's ``WebSocket.send``: an ASGI send that turns a lost socket into a disconnect.
Send = Callable[[AsgiMessage], Awaitable[None]]

# What Starlette raises from ``send`` once the socket is gone or closing.
_SEND_ERRORS = (OSError, RuntimeError, WebSocketDisconnect)

#: Defaults used when the protocol runs outside ``broker serve`` (see ``configure_protocol``).
_settings: dict[str, float] = {"transport_buffer_bytes": 64 * 1024, "close_timeout": 5.0}


def configure_protocol(*, transport_buffer_bytes: int, close_timeout: float) -> None:
    """Set the per-process limits ``BrokerWebSocketProtocol`` applies to every connection.

    uvicorn builds protocol instances itself from a class, so their settings come from here.
    """
    _settings["transport_buffer_bytes"] = transport_buffer_bytes
    _settings["close_timeout"] = close_timeout


class ClientGone(Exception):
    """The client's connection is closed: nothing more can be written to it."""


class TransportLink:
    """What the app may do with a connection's transport, handed over in ``scope["extensions"]``."""

    __slots__ = ("_protocol", "close_notice", "on_shutdown", "on_writable")

    def __init__(self, protocol: BrokerWebSocketProtocol) -> None:
        self._protocol = protocol
        #: Called instead of uvicorn's abrupt 1012 close when the server shuts down; the app sets
        #: it to drain the connection (``disconnect`` with ``reconnect`` true, then close 1001).
        self.on_shutdown: Callable[[], None] | None = None
        #: When the frame parser itself closes the connection (a message over the size limit:
        #: 1009, a protocol error: 1002, invalid UTF-8: 1007), the app may give the message to
        #: send just before the close frame: ``close_notice(code, reason)`` returns its payload
        #: and whether it is text, or None.
        self.close_notice: Callable[[int, str], tuple[bytes, bool] | None] | None = None
        #: Called when the transport's buffer drains below its low-water mark, and when the
        #: connection is lost: the app's writer waits for this instead of a task waiting. It runs
        #: inside the transport's callback, so it must schedule its writes, not make them.
        self.on_writable: Callable[[], None] | None = None

    @property
    def disconnected(self) -> bool:
        return self._protocol.disconnected

    def writable_now(self) -> bool:
        """Whether a write would go out at once: connected, not closing, buffer below its mark."""
        protocol = self._protocol
        return (
            protocol.writable.is_set()
            and not protocol.disconnected
            and not protocol.close_sent
            and not protocol.transport.is_closing()
        )

    def buffered_bytes(self) -> int:
        """Bytes waiting in the transport's write buffer."""
        transport = self._protocol.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def wait_writable(self) -> None:
        """Return once the transport's buffer is below its high-water mark (or it is gone)."""
        await self._protocol.writable.wait()

    def write_frames(self, frames: Sequence[bytes], *, text: bool) -> None:
        """Frame ``frames`` and write them to the socket in one call. Never blocks.

        Raises ``ClientGone`` when the connection is closing or closed.
        """
        protocol = self._protocol
        if protocol.disconnected or protocol.close_sent or protocol.transport.is_closing():
            raise ClientGone
        conn = protocol.conn
        try:
            if text:
                for frame in frames:
                    conn.send_text(frame)
            else:
                for frame in frames:
                    conn.send_binary(frame)
        except InvalidState as exc:
            raise ClientGone from exc
        protocol.transport.write(b"".join(conn.data_to_send()))

    def write_prepared(self, frames: Sequence[Frame], *, text: bool) -> None:
        """Write ``frames`` in one call, framing each payload at most once for all connections.

        With no extension negotiated (permessage-deflate is off by default), a server frame is a
        fixed function of its payload (RFC 6455 §5.2: no mask), so the bytes made for the first
        subscriber are written as they are to every other one. With an extension, each
        connection frames through ``websockets`` as usual. Raises ``ClientGone``.
        """
        protocol = self._protocol
        if protocol.conn.extensions:
            self.write_frames([frame.data for frame in frames], text=text)
            return
        if (
            protocol.disconnected
            or protocol.close_sent
            or protocol.conn.state is not State.OPEN
            or protocol.transport.is_closing()
        ):
            raise ClientGone
        if len(frames) == 1:
            frame = frames[0]
            wire = frame.wire
            if wire is None:
                wire = frame.wire = server_frame(frame.data, text=text)
            protocol.transport.write(wire)
            return
        wires = []
        for frame in frames:
            wire = frame.wire
            if wire is None:
                wire = frame.wire = server_frame(frame.data, text=text)
            wires.append(wire)
        protocol.transport.write(b"".join(wires))

    def close(self, code: int, reason: str) -> None:
        """Send the close frame now, as ASGI ``websocket.close`` would, without awaiting.

        Only while ``writable_now()``: this mirrors uvicorn 0.54's ``send`` for
        ``websocket.close`` past its wait for writability (the app's receive gets
        ``websocket.disconnect`` with ``code``), and resets the socket if the client does not
        answer within ``close_timeout``. Raises ``ClientGone``.
        """
        protocol = self._protocol
        if protocol.disconnected or protocol.close_sent or protocol.transport.is_closing():
            raise ClientGone
        try:
            protocol.conn.send_close(code, reason)
        except InvalidState as exc:
            raise ClientGone from exc
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        if protocol.read_paused:
            protocol.read_paused = False
            protocol.transport.resume_reading()
        protocol.close_timer = protocol.loop.call_later(
            protocol.close_timeout, protocol.abort_connection
        )

    def abort(self) -> None:
        """Reset the connection now, dropping whatever is buffered for it."""
        self._protocol.abort_connection()


class _ReceiveQueue:
    """What uvicorn needs of its per-connection ``asyncio.Queue``, in a fraction of the memory.

    An ``asyncio.Queue`` holds three deques (about 2.5 KiB with its object) for the life of the
    connection; there is one reader, and messages rarely wait, so a list made on demand and one
    future do.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[AsgiMessage] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: AsgiMessage) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> AsgiMessage:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def empty(self) -> bool:
        return not self._items

    def relabel_last_disconnect(self, code: int, reason: str) -> None:
        """Give the last queued ``websocket.disconnect`` message ``code`` and ``reason``."""
        if self._items and self._items[-1].get("type") == "websocket.disconnect":
            self._items[-1] = {**self._items[-1], "code": code, "reason": reason}


class _Flag:
    """What uvicorn needs of its per-connection ``asyncio.Event`` (``writable``), without the
    deque of waiters an ``asyncio.Event`` keeps for the life of the connection."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter


class BrokerWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the ``TransportLink`` extension, and lighter:
    an idle connection costs memory for as long as it lives (docs/performance.md)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = TransportLink(self)
        self.close_timeout = _settings["close_timeout"]
        self.queue = _ReceiveQueue()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        high = int(_settings["transport_buffer_bytes"])
        self.transport.set_write_buffer_limits(high=high, low=high // 4)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The ASGI task was created but has not run yet: the extension is in place before the
        # app sees the scope.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = self.link

    def resume_writing(self) -> None:
        super().resume_writing()
        self._notify_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        # No close frame came (a reset, a vanished peer): RFC 6455 §7.1.5 calls that 1006.
        # uvicorn reports 1005, which the RFC reserves for a close frame without a status code.
        lost = self.handshake_complete and self.conn.close_rcvd is None
        super().connection_lost(exc)
        if lost:
            self.queue.relabel_last_disconnect(1006, "connection lost")  # type: ignore[attr-defined]
        self._notify_writable()

    def _notify_writable(self) -> None:
        on_writable = self.link.on_writable
        if on_writable is not None:
            on_writable()

    def shutdown(self) -> None:
        on_shutdown = self.link.on_shutdown
        if self.handshake_complete and not self.close_sent and on_shutdown is not None:
            # The app drains the connection itself; uvicorn waits for it up to its grace period.
            self.stop_keepalive()
            on_shutdown()
            return
        super().shutdown()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake's request and response (with their headers) are not used again;
            # the app keeps what it needs from the scope.
            del self.request, self.response
            conn = self.conn
            if not conn.reader.buffer:
                # websockets' server parser is a generator that keeps the handshake request (and
                # its headers) as a local for as long as the connection lives. With nothing
                # buffered it waits for a frame's first byte: a fresh frame parser, waiting at
                # the same point, holds nothing else.
                conn.parser = WebSocketProtocol.parse(conn)
                next(conn.parser)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # uvicorn ends an unanswered close handshake with transport.close(), which waits for
            # the write buffer to drain: a client that stopped reading would keep its socket and
            # buffers forever. Reset it instead.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.abort_connection)

    def keepalive_timeout(self) -> None:
        # Same trap as above: after a ping timeout uvicorn closes gracefully, which never ends
        # for a client whose buffers are full.
        super().keepalive_timeout()
        self.abort_connection()

    def handle_parser_exception(self) -> None:
        close = self.conn.close_sent
        notice = self.link.close_notice
        if close is not None and notice is not None and not self.transport.is_closing():
            # The close frame is already queued in the protocol's output; what is written now
            # goes out before it.
            message = notice(close.code, close.reason)
            if message is not None:
                payload, text = message
                self.transport.write(server_frame(payload, text=text))
        super().handle_parser_exception()

    def abort_connection(self) -> None:
        transport = self.transport
        if transport is None or self.disconnected:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # Already closed by the peer: abort() below is all that is left to do.
        transport.abort()


def server_frame(payload: bytes, *, text: bool) -> bytes:
    """One final, unmasked server frame (RFC 6455 §5.2) holding ``payload``."""
    first = 0x81 if text else 0x82
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


class FrameSink(Protocol):
    """Where a connection's writer puts frames."""

    async def write(self, frames: Sequence[bytes], *, text: bool) -> None:
        """Write ``frames`` in order; raises ``ClientGone`` once the client is gone."""

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (best effort)."""

    def abort(self) -> None:
        """Cut the connection at once."""


class TransportFrameSink:
    """The fast path: several frames per ``transport.write``, through ``TransportLink``."""

    __slots__ = ("_link", "_send")

    def __init__(self, link: TransportLink, send: Send) -> None:
        self._link = link
        self._send = send

    async def write(self, frames: Sequence[bytes], *, text: bool) -> None:
        link = self._link
        await link.wait_writable()
        link.write_frames(frames, text=text)

    async def close(self, code: int, reason: str) -> None:
        await self._link.wait_writable()
        if self._link.disconnected:
            raise ClientGone
        # Through ASGI, so that uvicorn's close handshake and timers run as usual.
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except _SEND_ERRORS as exc:
            raise ClientGone from exc

    def abort(self) -> None:
        self._link.abort()


class AsgiFrameSink:
    """The portable path: one ASGI ``websocket.send`` per frame."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def write(self, frames: Sequence[bytes], *, text: bool) -> None:
        send = self._send
        try:
            for frame in frames:
                if text:
                    await send({"type": "websocket.send", "text": frame.decode()})
                else:
                    await send({"type": "websocket.send", "bytes": frame})
        except _SEND_ERRORS as exc:
            raise ClientGone from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except _SEND_ERRORS as exc:
            raise ClientGone from exc

    def abort(self) -> None:
        # ASGI has no way to reset a transport; the caller stops writing and returns, and the
        # server closes the connection when the app returns.
        pass
