"""Stalled clients: raw TCP sockets that finish a WebSocket handshake, join, then never read.

The receive buffer is set small before ``connect`` so the client's side holds almost nothing;
what the server sends piles up in the server's own socket buffers (up to ``tcp_wmem`` max) and
then in the server process. On ``/ws/chat`` being connected is enough to be a member; on
``/v1/ws`` the client sends a subscribe frame, masked by hand as RFC 6455 requires.

``StalledWatch`` samples the kernel's queues for these clients (``kernelq``) during a run, to tell
how much the kernel absorbed, when it filled, and when (if ever) the server dropped each client.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import socket
import struct
import threading
import time

from benchmarks.kernelq import KernelView
from benchmarks.wire import Protocol, encode_subscribe

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class HandshakeError(RuntimeError):
    """The server refused or botched a raw client's WebSocket handshake."""


def masked_text_frame(text: str) -> bytes:
    """One final text frame, masked as every client frame must be (RFC 6455 §5.3)."""
    return masked_frame(text)


def masked_frame(message: str | bytes) -> bytes:
    """One final masked frame: text for ``str``, binary for ``bytes``."""
    opcode = 0x1 if isinstance(message, str) else 0x2
    payload = message.encode() if isinstance(message, str) else message
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
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
        if protocol.subprotocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocol.subprotocol}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        _read_handshake_response(sock, key, timeout)
        if protocol.v1:
            sock.sendall(masked_frame(encode_subscribe(protocol, channel)))
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


@dataclasses.dataclass
class StalledTrace:
    """What the watcher saw for one stalled client over the run."""

    local_port: int
    #: Most bytes the kernel held for it at once.
    peak_kernel_bytes: int = 0
    #: Seconds from the watch's start to when the kernel first held 3/4 of its peak, if it did.
    filled_after_s: float | None = None
    #: Seconds from the watch's start to when the server no longer held the connection.
    dropped_after_s: float | None = None


class StalledWatch:
    """Samples the stalled clients' kernel queues every ``interval`` seconds in a thread."""

    def __init__(
        self, server_port: int, clients: list[StalledClient], interval: float = 0.1
    ) -> None:
        self._server_port = server_port
        self._interval = interval
        self.traces = [StalledTrace(client.local_port) for client in clients]
        self._samples: list[list[tuple[float, int]]] = [[] for _ in clients]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stalled-watch", daemon=True)
        self._started = 0.0
        self._kernel = KernelView()

    def start(self) -> None:
        self._started = time.monotonic()
        if self.traces:
            self._thread.start()

    def stop(self) -> list[StalledTrace]:
        """Stop sampling (after one last sample) and return the traces."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._sample()
        self._kernel.close()
        for trace, samples in zip(self.traces, self._samples, strict=True):
            threshold = 0.75 * trace.peak_kernel_bytes
            trace.filled_after_s = next(
                (at for at, held in samples if held > 0 and held >= threshold), None
            )
        return self.traces

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic() - self._started
        ports = [trace.local_port for trace in self.traces if trace.dropped_after_s is None]
        if not ports:
            return
        found = self._kernel.connections(self._server_port, ports)
        for trace, samples in zip(self.traces, self._samples, strict=True):
            if trace.dropped_after_s is not None:
                continue
            queues = found[trace.local_port]
            if not queues.server_holds:
                trace.dropped_after_s = now
                continue
            trace.peak_kernel_bytes = max(trace.peak_kernel_bytes, queues.total)
            samples.append((now, queues.total))
