"""Writing frames to a client's socket: ``TransportLink``, what the app may do with a
connection's transport (several frames per ``transport.write``, a close without awaiting, an
abort that resets the socket), and the two frame sinks the connection's writers use: through
the link (under ``broker serve``), or through ASGI ``send`` (mounted under another server).

``broker.transport.BrokerWebSocketProtocol`` makes the link and hands it to the app in the ASGI
scope's ``extensions``; the why of this design and the alternatives rejected are in that
module's docstring.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Message as AsgiMessage
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import InvalidState
from websockets.protocol import State

from broker.sockets import limits
from protocol import Frame

if TYPE_CHECKING:
    from broker.connection_state import ConnectionStatistics
    from broker.monitor.histogram import Histogram
    from broker.transport import BrokerWebSocketProtocol


#: Starlette's ``WebSocket.send``: an ASGI send that turns a lost socket into a disconnect.
Send = Callable[[AsgiMessage], Awaitable[None]]

#: ``State.OPEN``, looked up once: on Python 3.11 an attribute of an ``Enum`` class goes through
#: ``EnumType.__getattr__`` (about 800 instructions), and this is read once per write.
_OPEN = State.OPEN

# What Starlette raises from ``send`` once the socket is gone or closing.
_SEND_ERRORS = (OSError, RuntimeError, WebSocketDisconnect)


class MessageSource(Protocol):
    """The app's messages, read from the protocol's queue (``TransportLink.messages``)."""

    def next_message(self) -> AsgiMessage | None:
        """The next ASGI message (``websocket.receive`` or ``websocket.disconnect``), or None
        while none is queued: then wait for ``message_arrival()`` and ask again."""

    def message_arrival(self) -> asyncio.Future[None]:
        """A future that ends once a message is queued."""

    #: Offered each message first while the reader waits with nothing queued (True: taken).
    take_now: Callable[[str | None, bytes | None], bool] | None

    def defer(self, then: Callable[[], Awaitable[None]]) -> None:
        """Queue ``then`` for the reader to await, behind everything queued."""


class ClientGone(Exception):
    """The client's connection is closed: nothing more can be written to it."""


class TransportLink:
    """What the app may do with a connection's transport, handed over in ``scope["extensions"]``."""

    __slots__ = (
        "_conn",
        "_latency",
        "_open",
        "_protocol",
        "_stats",
        "_text",
        "_transport",
        "close_notice",
        "on_reply_blocked",
        "on_shutdown",
        "on_writable",
    )

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
        #: Called with the number and size of the protocol's own replies (pongs) held back since
        #: the socket last took everything: the app counts them against its outbox's bounds.
        self.on_reply_blocked: Callable[[int, int], None] | None = None
        #: The connection's accounting for ``write_now`` (``direct``): its statistics, its
        #: encoding's latency histogram, and whether its frames are text.
        self._stats: ConnectionStatistics | None = None
        self._latency: Histogram | None = None
        self._text = True
        #: Whether ``write_now`` may write, as far as the connection's own events tell
        #: (``refresh``): ``direct`` was called, no extension frames each connection apart, the
        #: socket is connected and below its high-water mark. One attribute read per delivery
        #: instead of eight; ``write_now`` still checks what the protocol's events do not tell
        #: (a close frame sent or received, a transport closing).
        self._open = False
        #: The protocol's ``conn`` and ``transport``, for ``write_now``: both fixed once the
        #: handshake is done, which it is by the time ``direct`` is called.
        self._conn: Any = None
        self._transport: Any = None

    @property
    def disconnected(self) -> bool:
        return self._protocol.disconnected

    def messages(self, receive: Callable[[], Awaitable[AsgiMessage]]) -> MessageSource | None:
        """Where the app may read its messages without the ASGI layers: the protocol itself,
        when ``receive`` (the ASGI ``receive`` the app was handed) is the protocol's own.
        None when something wraps it (an ASGI middleware that may change what it reads): the
        app then reads through ``receive``."""
        protocol = self._protocol
        # Bound methods are equal when their object and function are.
        return protocol if receive == protocol.receive else None

    def defer(self, then: Callable[[], Awaitable[None]]) -> None:
        """Queue ``then`` for the app's reader to await, behind everything queued
        (``ClientMessages.defer``)."""
        self._protocol.defer(then)

    def admission_refusal(self, address: str | None) -> str | None:
        """Why this WebSocket client must be told to come back later (1013), or None.

        Every socket of the server counts from accept (``SocketTally``), this one included, and
        from now on under ``address``, the client as the app sees it (``X-Forwarded-For`` from
        a trusted proxy).
        """
        protocol = self._protocol
        tally = protocol.tally
        if tally is None:
            return None
        if address is not None:
            tally.assign(protocol.transport, address)
        current = limits()
        if current.max_connections and tally.total > current.max_connections:
            return "max_connections"
        per_ip = current.max_connections_per_ip
        if per_ip and address is not None and tally.count(address) > per_ip:
            return "max_connections_per_ip"
        return None

    def writable_now(self) -> bool:
        """Whether a write would go out at once: connected, not closing, buffer below its mark."""
        protocol = self._protocol
        return (
            # ``writable.is_set()`` without a call (a ``transport_parts.Flag``): once per write.
            protocol.writable._set  # type: ignore[attr-defined]
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
            or protocol.conn.state is not _OPEN
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

    def direct(self, stats: ConnectionStatistics, latency: Histogram | None, *, text: bool) -> None:
        """Let the outbox write publications straight to this link (``write_now``), counted in
        ``stats`` and, one write in the histogram's ``every``, in ``latency``."""
        self._stats, self._latency, self._text = stats, latency, text
        protocol = self._protocol
        self._conn, self._transport = protocol.conn, protocol.transport
        self.refresh()

    def refresh(self) -> None:
        """Recompute ``_open``. The protocol calls this whenever what it depends on changes:
        when writing pauses or resumes and when the connection is lost."""
        self._open = self._open_by_events()

    def _open_by_events(self) -> bool:
        protocol = self._protocol
        return bool(
            self._stats is not None
            and protocol.writable._set  # type: ignore[attr-defined]
            and not protocol.disconnected
            and not protocol.conn.extensions
        )

    def open_now(self) -> bool:
        """Whether ``write_now`` would write now, computed from the state as it is (not from
        ``_open``, which may be stale): the reference the tests hold ``_open`` and the checks
        ``write_now`` makes itself to."""
        protocol = self._protocol
        conn = protocol.conn
        return (
            self._open_by_events()
            and not protocol.close_sent
            and conn.close_sent is None
            and conn.close_rcvd is None
            and not protocol.transport.is_closing()
        )

    def write_now(self, frame: Frame) -> bool:
        """Write one publication if it goes out at once, as ``write_prepared`` does, counted as
        the connection's writer counts a write (``direct``); whether it did.

        The outbox's direct path (``Outbox.writer``), called from the hub's fan-out once per
        delivery: one call does the checks, the write and the accounting. Only when the socket
        is open and below its mark and no extension frames each connection apart (the frame is
        framed once for all): otherwise it writes nothing and returns False, and the outbox
        queues the frame for the writer. Never raises, never closes anything.
        """
        if not self._open:
            return False
        conn = self._conn
        # ``conn.state is State.OPEN`` without the property: the handshake is done (``direct``
        # is called after it), so OPEN is no close frame sent or received yet. Every place
        # that sets the protocol's ``close_sent`` after the handshake also sends a close frame
        # or closes the transport, which these two checks see.
        if conn.close_sent is not None or conn.close_rcvd is not None:
            return False
        transport = self._transport
        if transport.is_closing():
            return False
        wire = frame.wire
        if wire is None:
            wire = frame.wire = server_frame(frame.data, text=self._text and not frame.binary)
        transport.write(wire)
        stats = self._stats
        assert stats is not None  # ``_open`` is only ever true after ``direct``
        stats.messages_out += 1
        stats.bytes_out += len(frame.data)
        latency = self._latency
        if latency is not None:
            latency.countdown -= 1
            if latency.countdown <= 0 and frame.accepted:
                latency.observe(time.monotonic() - frame.accepted)
                latency.countdown = latency.every
        return True

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
