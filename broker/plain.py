"""The tutorial's three servers (docs/protocol.md §3) on the broker's machinery.

Each runs on a ``Connection``: its replies go through the bounded outbox and the writer, so a
client that stops reading is dropped as a slow consumer instead of stalling anyone. ``/ws/chat``
broadcasts through the hub's chat room, with each frame built once for the whole room.
"""

from __future__ import annotations

import msgspec

from broker.connection import Connection
from broker.hub import ChatJoinCommand, ChatSayCommand, Hub
from protocol import CloseCode

_RECEIVED = msgspec.json.encode({"status": "received"})
_error_encoder = msgspec.json.Encoder()


async def _refuse_binary(connection: Connection) -> None:
    connection.protocol_error("protocol.wrong_frame_kind", received="binary")
    connection.request_close(CloseCode.UNSUPPORTED_DATA)


async def run_echo(connection: Connection) -> None:
    """``/ws``: each text frame comes back as ``Echo: <text>``."""

    async def on_text(text: str) -> None:
        connection.send_frame(f"Echo: {text}".encode())

    async def on_bytes(_: bytes) -> None:
        await _refuse_binary(connection)

    await connection.receive_loop(on_text, on_bytes)


async def run_data(connection: Connection) -> None:
    """``/ws/data``: JSON text is acknowledged, bytes come back unchanged."""

    async def on_text(text: str) -> None:
        try:
            msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            connection.send_frame(_error_encoder.encode({"status": "error", "detail": detail}))
            return
        connection.send_frame(_RECEIVED)

    async def on_bytes(data: bytes) -> None:
        connection.send_frame(data, binary=True)

    await connection.receive_loop(on_text, on_bytes)


async def run_chat(connection: Connection, hub: Hub) -> None:
    """``/ws/chat``: every text frame goes to every chat client as ``Client says: <text>``."""
    subscriber = connection.subscriber
    await hub.submit(ChatJoinCommand(subscriber))

    async def on_text(text: str) -> None:
        await hub.submit(ChatSayCommand(subscriber, text))

    async def on_bytes(_: bytes) -> None:
        await _refuse_binary(connection)

    # Leaving is the hub's job: detaching a chat member tells the others.
    await connection.receive_loop(on_text, on_bytes)
