"""A lean asyncio WebSocket client for the load generator: one ``asyncio.Protocol`` per socket.

The ``websockets`` client costs tens of microseconds of Python per received frame (a queue, a
future and a task switch for each ``recv``); with the server and the generator sharing two cores,
that would make the generator the bottleneck. This client parses server frames straight out of
``data_received`` and hands each complete message to a callback, so receiving costs a few
microseconds per frame, and many frames arriving in one read are handled in one loop.

What it does: the opening handshake (with ``Sec-WebSocket-Accept`` checked and one subprotocol
offered), text and binary messages (fragmented ones reassembled), masked client frames (the mask
is applied by ``websockets``' C helper), answering pings, and the closing handshake. What it does
not: extensions (no compression is offered), TLS, redirects. Server frames must be unmasked.

    client = await connect("127.0.0.1", port, "/ws/chat", on_message=handle)
    client.send_text("hello")
    await client.drain()          # only when the socket pushes back
    await client.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Final, cast

from websockets.speedups import apply_mask

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER: Final = 16384

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Receives each complete message: its payload and whether it came as a binary frame.
MessageHandler = Callable[[bytes, bool], None]


class HandshakeFailed(ConnectionError):
    """The server refused the WebSocket handshake or answered something else."""


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame with a fresh random mask (RFC 6455 §5.2-5.3)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0xFE, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, length)
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


def handshake_request(
    host: str, port: int, path: str, subprotocol: str | None
) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value it must be answered with."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return request, accept


class FastWebSocket(asyncio.Protocol):
    """The protocol object of one connection; ``connect`` creates it and waits for the handshake."""

    def __init__(
        self, request: bytes, accept: bytes, subprotocol: str | None, on_message: MessageHandler
    ) -> None:
        self._request = request
        self._accept = accept
        self._subprotocol = subprotocol
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        #: Resolves with how the connection ended, e.g. ``closed 1000`` or ``connection lost``.
        self.closed: asyncio.Future[str] = loop.create_future()
        #: Bytes of an incomplete frame (or handshake response) waiting for the rest.
        self._pending = b""
        self._open = False
        self._fragments: list[bytes] = []
        self._fragment_binary = False
        self._close_sent = False
        self._writable: asyncio.Future[None] | None = None
        #: Frames and bytes received (all kinds), for the generator's own accounting.
        self.frames_in = 0

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if not self._open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEADER:
                    self._fail_handshake("response headers too large")
                else:
                    self._pending = data
                return
            head = data[:end]
            data = data[end + 4 :]
            if not self._check_handshake(head):
                return
        if data:
            self._parse(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(f"connection lost: {exc}"))
        self._finish("connection lost" if not self._close_sent else "closed (no close frame)")
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- sending -----------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Queue a text message (never blocks; see ``drain``)."""
        self._write(encode_frame(OP_TEXT, text.encode()))

    def send_binary(self, data: bytes) -> None:
        """Queue a binary message (never blocks; see ``drain``)."""
        self._write(encode_frame(OP_BINARY, data))

    def send(self, message: str | bytes) -> None:
        """A text message for ``str``, a binary one for ``bytes``."""
        if isinstance(message, str):
            self.send_text(message)
        else:
            self.send_binary(message)

    @property
    def paused(self) -> bool:
        """Whether the transport's buffer is above its high-water mark (the server reads slowly)."""
        return self._writable is not None and not self._writable.done()

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark again."""
        if self._writable is not None and not self._writable.done():
            await asyncio.shield(self._writable)

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    # --- closing -----------------------------------------------------------------------------

    async def close(self, code: int = 1000, wait: float = 1.0) -> None:
        """Closing handshake, bounded by ``wait`` seconds; the socket is aborted after it."""
        if not self.closed.done() and not self._close_sent:
            self._close_sent = True
            self._write(encode_frame(OP_CLOSE, struct.pack("!H", code)))
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.closed), wait)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self.transport is not None:
            self.transport.abort()
        self._finish("aborted")

    def _finish(self, how: str) -> None:
        if not self.closed.done():
            self.closed.set_result(how)

    # --- receiving ---------------------------------------------------------------------------

    def _check_handshake(self, head: bytes) -> bool:
        status, *lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in f"{status} ":
            self._fail_handshake(f"handshake refused: {status!r}")
            return False
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept", "").encode() != self._accept:
            self._fail_handshake("bad Sec-WebSocket-Accept")
            return False
        chosen = headers.get("sec-websocket-protocol")
        if self._subprotocol is not None and chosen != self._subprotocol:
            self._fail_handshake(f"subprotocol {chosen!r} instead of {self._subprotocol!r}")
            return False
        self._open = True
        if not self.opened.done():
            self.opened.set_result(None)
        return True

    def _fail_handshake(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeFailed(reason))
        self.abort()

    def _parse(self, buffer: bytes) -> None:
        """Handle every complete frame in ``buffer``; keep the rest for the next read."""
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            first = buffer[pos]
            second = buffer[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            if second & 0x80:  # a server must not mask
                self.abort()
                return
            end = start + length
            if end > size:
                break
            payload = buffer[start:end]
            pos = end
            self.frames_in += 1
            opcode = first & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if first & 0x80:
                    self.on_message(payload, opcode == OP_BINARY)
                else:
                    self._fragments = [payload]
                    self._fragment_binary = opcode == OP_BINARY
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if first & 0x80:
                    message = b"".join(self._fragments)
                    self._fragments = []
                    self.on_message(message, self._fragment_binary)
            elif opcode == OP_PING:
                self._write(encode_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._on_close(payload)
                return
        if pos < size:
            self._pending = buffer[pos:]

    def _on_close(self, payload: bytes) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        if not self._close_sent:
            self._close_sent = True
            self._write(encode_frame(OP_CLOSE, payload[:2]))
        self._finish(f"closed {code}")
        if self.transport is not None:
            self.transport.close()


async def connect(
    host: str,
    port: int,
    path: str,
    on_message: MessageHandler,
    *,
    subprotocol: str | None = None,
    open_timeout: float = 10.0,
) -> FastWebSocket:
    """Open a connection and complete the handshake within ``open_timeout`` seconds."""
    request, accept = handshake_request(host, port, path, subprotocol)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(open_timeout):
        transport, protocol = await loop.create_connection(
            lambda: FastWebSocket(request, accept, subprotocol, on_message), host, port
        )
        try:
            await protocol.opened
        except BaseException:
            transport.abort()
            raise
    return protocol
