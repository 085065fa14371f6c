"""Raw sockets for the hostile-client tests: requests sent as an attacker would, and what the
server answers, read without any HTTP library's help."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket

import psutil

from tests.conftest import TIMEOUT

MiB = 1 << 20


def rss() -> int:
    """Resident memory of this process: the in-process server's, plus the test's own (small)."""
    return int(psutil.Process().memory_info().rss)


async def connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, ("127.0.0.1", port))
    return sock


def upgrade_request(path: str = "/v1/ws", *extra: str, port: int = 0) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False when the server closed or reset the connection meanwhile."""
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
    except OSError:
        return False
    return True


async def read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:  # noqa: ASYNC109
    """Everything the server sends until it closes (or resets) the connection. Raises
    ``TimeoutError`` when it does neither within ``timeout``."""
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 1 << 16)
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk


def close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
