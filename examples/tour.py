"""A tour of the broker: connect, subscribe, publish. Run it against a running broker:

    .venv/bin/python examples/tour.py ws://127.0.0.1:8000/v1/ws

It uses the plain ``websockets`` client and JSON, as any WebSocket client in any language would.
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str) -> None:
    async with connect(url, subprotocols=["broker.v1.json"]) as alice, connect(url) as bob:  # type: ignore[list-item]
        # The first message is always `welcome`, with the client id and the heartbeat to keep.
        print("alice:", await alice.recv())  # noqa: T201
        print("bob:  ", await bob.recv())  # noqa: T201

        # Alice subscribes to a channel; the reply names its stream position (offset and epoch).
        await alice.send(json.dumps({"type": "subscribe", "id": 1, "channel": "chat:lobby"}))
        print("alice:", await alice.recv())  # noqa: T201

        # Bob publishes; with an `id` he gets `published` with the offset the message took.
        message = {"type": "publish", "id": 1, "channel": "chat:lobby", "data": {"text": "hi"}}
        await bob.send(json.dumps(message))
        print("bob:  ", await bob.recv())  # noqa: T201

        # Alice receives it as `message`, with the channel, offset, epoch, data and sender.
        print("alice:", await alice.recv())  # noqa: T201

        # Clients send something at least every `heartbeat` seconds; `ping` when idle.
        await alice.send(json.dumps({"type": "ping", "id": 2}))
        print("alice:", await alice.recv())  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/v1/ws"))
