"""Opening a ``/v1/ws`` connection: the 101 response and ``welcome`` reach the client together.

The server holds its 101 response (``TCP_CORK``) until ``welcome`` is written in the same turn,
so a client's first read holds both: one wake-up instead of two for every connection opened
(docs/performance.md, "Connection rate, against the peers"). Linux only (``TCP_CORK``)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest

from tests.conftest import TIMEOUT, serve_broker
from tests.rawclient import close_frame

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux only"),
]


def handshake(port: int, path: str, subprotocol: str | None = None) -> bytes:
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
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def first_read(port: int) -> bytes:
    """Open a ``/v1/ws`` connection and return what its first read got, then close it.

    A blocking socket in a thread: its ``recv`` returns as soon as the first segment arrives,
    while the server (on the test's event loop) goes on with its next turn."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(handshake(port, "/v1/ws", "broker.v1.json"))
        first = sock.recv(65536)
        sock.sendall(close_frame())
        while sock.recv(65536):  # the close reply, then EOF
            pass
        return first


async def test_the_101_response_and_welcome_arrive_in_one_read() -> None:
    async with serve_broker() as running:
        for _ in range(5):  # every connection, not one lucky one
            first = await asyncio.to_thread(first_read, running.port)
            head, _, rest = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            assert b'"type":"welcome"' in rest
