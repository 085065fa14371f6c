"""A tour of the broker: connect, subscribe, publish. Run it against a running broker:

    .venv/bin/python examples/tour.py ws://127.0.0.1:8000/v1/ws

It uses the plain ``websockets`` client and JSON, as any WebSocket client in any language would,
and prints every frame as it goes over the wire: ``->`` from the client, ``<-`` to it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


async def send(name: str, ws: ClientConnection, message: dict[str, Any]) -> None:
    frame = json.dumps(message, separators=(",", ":"))
    print(f"{name:5} -> {frame}")  # noqa: T201
    await ws.send(frame)


async def receive(name: str, ws: ClientConnection) -> None:
    print(f"{name:5} <- {await ws.recv()}")  # noqa: T201


async def main(url: str) -> None:
    async with connect(url, subprotocols=["broker.v1.json"]) as alice, connect(url) as bob:  # type: ignore[list-item]
        # The first message is always `welcome`, with the client id and the heartbeat to keep.
        await receive("alice", alice)
        await receive("bob", bob)

        # Alice subscribes to a channel; the reply names its stream position (offset and epoch).
        await send("alice", alice, {"type": "subscribe", "id": 1, "channel": "chat:lobby"})
        await receive("alice", alice)

        # Bob publishes; with an `id` he gets `published` with the offset the message took.
        message = {"type": "publish", "id": 1, "channel": "chat:lobby", "data": {"text": "hi"}}
        await send("bob", bob, message)
        await receive("bob", bob)

        # Alice receives it as `message`, with the channel, offset, epoch, data and sender.
        await receive("alice", alice)

        # Clients send something at least every `heartbeat` seconds; `ping` when idle.
        await send("alice", alice, {"type": "ping", "id": 2})
        await receive("alice", alice)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/v1/ws"))
