"""Stalled clients: raw TCP sockets that finish a WebSocket handshake, join, then never read.

The receive buffer is set small before ``connect`` so the client's side holds almost nothing;
what the server sends piles up in the server's own socket buffers (up to ``tcp_wmem`` max) and
then in the server process. On ``/ws/chat`` being connected is enough to be a member; on
``/v1/ws`` the client sends a subscribe frame, masked by hand as RFC 6455 requires.

``kernel_queues`` reads ``/proc/net/tcp`` to tell how many bytes sit in the kernel for such a
client and whether the server still holds the connection.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import socket
import struct
import time
from pathlib import Path

from benchmarks.wire import V1_SUBPROTOCOL, Protocol, subscribe_frame

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT"}


class HandshakeError(RuntimeError):
    """The server refused or botched a raw client's WebSocket handshake."""


def masked_text_frame(text: str) -> bytes:
    """One final text frame, masked as every client frame must be (RFC 6455 §5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


@dataclasses.dataclass
class StalledClient:
    """One connected, joined, never-reading client."""

    sock: socket.socket
    local_port: int

    def close(self) -> None:
        """Reset the connection (SO_LINGER 0), so neither side keeps its queued bytes."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def open_stalled(
    port: int,
    path: str,
    protocol: Protocol,
    channel: str,
    *,
    rcvbuf: int = 4096,
    timeout: float = 5.0,
) -> StalledClient:
    """Connect, handshake and join; from then on the socket is never read again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocol is Protocol.V1:
            lines.append(f"Sec-WebSocket-Protocol: {V1_SUBPROTOCOL}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        _read_handshake_response(sock, key, timeout)
        if protocol is Protocol.V1:
            sock.sendall(masked_text_frame(subscribe_frame(channel)))
        return StalledClient(sock=sock, local_port=sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise


def _read_handshake_response(sock: socket.socket, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    response = b""
    while b"\r\n\r\n" not in response:
        if time.monotonic() > deadline or len(response) > 16384:
            raise HandshakeError("no complete handshake response")
        chunk = sock.recv(4096)  # may also take the first frames: the client reads nothing later
        if not chunk:
            raise HandshakeError("connection closed during the handshake")
        response += chunk
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status, *header_lines = head.split("\r\n")
    if " 101 " not in f"{status} ":
        raise HandshakeError(f"handshake refused: {status!r}")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    expected = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise HandshakeError("bad Sec-WebSocket-Accept")


@dataclasses.dataclass(frozen=True)
class KernelQueues:
    """What the kernel holds for one stalled client's connection."""

    #: Bytes queued in the server's socket (sent but not acknowledged, or not sent yet).
    server_send_queue: int
    #: Bytes waiting in the stalled client's receive buffer.
    client_receive_queue: int
    #: TCP state of the client's socket (ESTABLISHED while the server keeps it).
    client_state: str
    #: Whether the server still has a socket for this connection.
    server_holds: bool

    @property
    def total(self) -> int:
        return self.server_send_queue + self.client_receive_queue


def kernel_queues(server_port: int, client_port: int) -> KernelQueues:
    """Read ``/proc/net/tcp`` for one loopback connection between the server and a client."""
    server_queue = client_queue = 0
    client_state = "GONE"
    server_holds = False
    loopback = "0100007F"
    text = Path("/proc/net/tcp").read_text()
    for line in text.splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        tx, rx = (int(part, 16) for part in queues.split(":"))
        if local == f"{loopback}:{client_port:04X}" and remote == f"{loopback}:{server_port:04X}":
            client_state = _TCP_STATES.get(state, state)
            client_queue = rx
        elif local == f"{loopback}:{server_port:04X}" and remote == f"{loopback}:{client_port:04X}":
            server_holds = state == "01"
            server_queue = tx
    return KernelQueues(server_queue, client_queue, client_state, server_holds)


def tcp_wmem_max() -> int:
    """The largest send buffer the kernel autotunes a socket to (``tcp_wmem`` max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 0
