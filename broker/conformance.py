"""``/conformance/echo``: every message comes back as it came (text as text, binary as binary),
for RFC 6455 conformance testing (the Autobahn cases, ``scripts/conformance``).

Off unless ``websocket.conformance_echo`` is set; off, the path answers 404. On, it runs on the
same stack as ``/v1/ws``: the same protocol classes below ASGI, a ``Connection`` with its bounded
outbox and writer, ``websocket.max_message_bytes``, ``websocket.max_fragments``, the heartbeat,
the connection limits and the close timeouts. What the conformance run shows is thus what
``/v1/ws`` clients get.
"""

from __future__ import annotations

from broker.connection import Connection


async def run_conformance_echo(connection: Connection) -> None:
    """Echo every message until the client leaves."""
    settings = connection.settings.websocket

    async def on_text(text: str) -> None:
        connection.send_frame(text.encode())

    async def on_bytes(data: bytes) -> None:
        connection.send_frame(data, binary=True)

    await connection.receive_loop(
        on_text, on_bytes, heartbeat=settings.heartbeat + settings.heartbeat_grace
    )
