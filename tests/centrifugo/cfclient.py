"""A protocol-level Centrifugo client for tests: raw commands out, replies and pushes in."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import TIMEOUT

_DECODER = msgspec.json.Decoder()


class CentrifugoClient:
    """Sends commands as dicts (with ``id`` filled in) and reads replies as dicts."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.ids = itertools.count(1)
        self.frames: list[str] = []
        self.pending: list[dict[str, Any]] = []
        #: Pushes that arrived before the reply a ``call`` waited for: ``receive`` returns them
        #: first, in order (the protocol lets a push overtake a reply).
        self.pushes: list[dict[str, Any]] = []
        #: Server pings answered so far.
        self.pings = 0

    async def send(self, *commands: dict[str, Any]) -> list[int]:
        """Send ``commands`` in one frame; their ids."""
        ids = []
        lines = []
        for command in commands:
            if "id" not in command and command:
                command = {"id": next(self.ids), **command}
            ids.append(command.get("id", 0))
            lines.append(msgspec.json.encode(command))
        await self.websocket.send(b"\n".join(lines).decode())
        return ids

    async def receive(self) -> dict[str, Any]:
        """The next reply or push (not pings, which are answered)."""
        if self.pushes:
            return self.pushes.pop(0)
        while True:
            if not self.pending:
                async with asyncio.timeout(TIMEOUT):
                    frame = await self.websocket.recv()
                assert isinstance(frame, str), "Centrifugo JSON travels in text frames"
                self.frames.append(frame)
                self.pending.extend(_DECODER.decode(line) for line in frame.split("\n"))
            message: dict[str, Any] = self.pending.pop(0)
            if message == {}:
                self.pings += 1
                await self.websocket.send("{}")
                continue
            return message

    async def until(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            message = await self.receive()
            if condition(message):
                return message

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return its reply (pushes before it are kept in ``pushes``)."""
        (request_id,) = await self.send(command)
        held: list[dict[str, Any]] = []
        while True:
            message = await self.receive()
            if message.get("id") == request_id:
                self.pushes[:0] = held
                return message
            held.append(message)

    async def connect(self, **request: Any) -> dict[str, Any]:
        reply = await self.call({"connect": request})
        assert "connect" in reply, reply
        result: dict[str, Any] = reply["connect"]
        return result


@asynccontextmanager
async def open_centrifugo(url: str, *, connected: bool = True) -> AsyncIterator[CentrifugoClient]:
    async with connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as websocket:
        client = CentrifugoClient(websocket)
        if connected:
            await client.connect(name="test", version="1")
        yield client
