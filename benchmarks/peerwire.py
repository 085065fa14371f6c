"""The wire of the channel peers: the NATS text protocol and socket.io 4, inside WebSocket.

NATS (``nats-server`` over WebSocket): a byte stream carried in WebSocket frames, where one
frame may hold several protocol messages or part of one. The client sends ``CONNECT {...}``,
``SUB <subject> <sid>``, ``PUB <subject> <size>`` + payload, and ``PING`` (answered ``PONG``
once everything before it is processed: the subscriber's "subscribed"); the server sends
``INFO {...}``, ``MSG <subject> <sid> <size>`` + payload, ``PING`` (to be answered ``PONG``)
and ``-ERR '...'``. ``NatsReader`` splits the stream into those.

socket.io 4 (Engine.IO 4, WebSocket transport, path ``/socket.io/?EIO=4&transport=websocket``):
the server opens with ``0{...}`` (Engine.IO open); the client joins the main namespace with
``40`` and is answered ``40{"sid":...}``; events are ``42["name",...args]``, with an ack id
after ``42`` when the sender wants an answer (``421["subscribe","c"]``, answered ``431[true]``);
the server pings with ``2``, answered ``3``. The peer (``peers/node_socketio``) joins the room
of a ``subscribe`` and sends a ``publish``'s data to its room as the event ``message``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

NATS_CONNECT: Final = (
    b'CONNECT {"verbose":false,"pedantic":false,"headers":false,"no_responders":false,'
    b'"protocol":1,"lang":"python","version":"bench"}\r\n'
)
NATS_PING: Final = b"PING\r\n"
NATS_PONG: Final = b"PONG\r\n"

SOCKETIO_PATH: Final = "/socket.io/?EIO=4&transport=websocket"
SOCKETIO_CONNECT: Final = "40"
SOCKETIO_PONG: Final = "3"
_SOCKETIO_MESSAGE: Final = b'42["message",'


def nats_subscribe(channel: str, sid: int = 1) -> bytes:
    """``CONNECT``, ``SUB`` and a ``PING`` whose ``PONG`` says the subscription is in place."""
    return NATS_CONNECT + f"SUB {channel} {sid}\r\n".encode() + NATS_PING


def nats_publish(channel: str, payload: str) -> bytes:
    body = payload.encode()
    return b"PUB %s %d\r\n%s\r\n" % (channel.encode(), len(body), body)


class NatsReader:
    """Splits the server's byte stream into ``(kind, payload)``: ``MSG`` with its payload bytes;
    ``PING``, ``PONG``, ``INFO``, ``+OK`` and ``-ERR`` with the rest of their line."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        position = 0
        end = len(buffer)
        try:
            while position < end:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    break
                if buffer.startswith(b"MSG ", position):
                    size = int(buffer[buffer.rfind(b" ", position, line_end) + 1 : line_end])
                    start = line_end + 2
                    if start + size + 2 > end:
                        break  # the payload is not all here yet
                    yield b"MSG", buffer[start : start + size]
                    position = start + size + 2
                    continue
                line = buffer[position:line_end]
                kind, _, rest = line.partition(b" ")
                yield kind, rest
                position = line_end + 2
        finally:
            self._buffer = buffer[position:]


def socketio_subscribe(channel: str, ack: int = 1) -> str:
    return f'42{ack}["subscribe","{channel}"]'


def socketio_publish(channel: str, payload: str) -> str:
    return f'42["publish","{channel}",{payload}]'


def socketio_message_payload(frame: bytes) -> memoryview | None:
    """The data of a ``message`` event (the JSON payload), or None for any other packet."""
    if frame.startswith(_SOCKETIO_MESSAGE) and frame.endswith(b"]"):
        return memoryview(frame)[len(_SOCKETIO_MESSAGE) : -1]
    return None
