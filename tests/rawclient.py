"""Raw WebSocket clients for the tests that need a misbehaving peer.

``open_stalled`` completes the handshake, optionally sends some frames, and then never reads: its
receive buffer is made small before ``connect`` so that what the server sends piles up on the
server's side. Everything is non-blocking, because the server under test runs on the same loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import TIMEOUT


def masked_frame(payload: bytes, *, opcode: int = 0x1) -> bytes:
    """One final frame, masked as every client frame must be (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def close_frame(code: int = 1000) -> bytes:
    return masked_frame(struct.pack("!H", code), opcode=0x8)


@dataclass
class RawClient:
    sock: socket.socket

    @property
    def local_port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def reset(self) -> None:
        """Drop the connection abruptly: an RST, not a close handshake."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def open_raw(
    port: int,
    path: str,
    *,
    subprotocol: str | None = None,
    rcvbuf: int = 4096,
) -> RawClient:
    """Connect and complete the WebSocket handshake; read nothing after the response headers."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        # Read one byte at a time so that nothing after the headers is consumed.
        while not response.endswith(b"\r\n\r\n"):
            chunk = await loop.sock_recv(sock, 1)
            if not chunk:
                raise ConnectionError(f"handshake refused: {response!r}")
            response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(f"handshake refused: {response!r}")
    return RawClient(sock)


def server_holds(server_port: int, client_port: int) -> bool:
    """Whether the server still has a socket for the connection from ``client_port``.

    Read from ``/proc/net/tcp``: the server's side has local port ``server_port`` and remote port
    ``client_port``. A socket that the server has closed and that holds no unsent data (FIN_WAIT2,
    TIME_WAIT, CLOSE) is the kernel's business, not the server's, and does not count.
    """
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        unsent = int(fields[4].split(":")[0], 16)
        if (
            int(local.split(":")[1], 16) == server_port
            and int(remote.split(":")[1], 16) == client_port
            and (state not in _LET_GO or unsent > 0)
        ):
            return True
    return False


_LET_GO = {"05", "06", "07"}  # FIN_WAIT2, TIME_WAIT, CLOSE


async def read_frames(client: RawClient, *, idle: float = 1.0) -> list[tuple[int, bytes]]:
    """Read server frames (unmasked) as ``(opcode, payload)`` until the socket closes or stays
    silent for ``idle`` seconds."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await loop.sock_recv(client.sock, 1 << 16)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        buffer += chunk
    frames: list[tuple[int, bytes]] = []
    position = 0
    while position + 2 <= len(buffer):
        first, second = buffer[position], buffer[position + 1]
        length, header = second & 0x7F, 2
        if length == 126:
            (length,) = struct.unpack_from("!H", buffer, position + 2)
            header = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", buffer, position + 2)
            header = 10
        if position + header + length > len(buffer):
            break
        frames.append((first & 0x0F, buffer[position + header : position + header + length]))
        position += header + length
    return frames
