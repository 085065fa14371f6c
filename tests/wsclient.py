"""A test client for ``/v1/ws`` over a real socket, speaking the ``protocol`` types."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from protocol import (
    CODECS,
    ClientMessage,
    Codec,
    Encoding,
    Publication,
    Published,
    ServerMessage,
    Welcome,
)
from tests.conftest import TIMEOUT

M = TypeVar("M")


class ProtocolClient:
    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        self.ws = ws
        self.codec = codec
        self.pending: deque[ServerMessage] = deque()
        self.frames = 0
        self.welcome: Welcome | None = None

    async def send(self, message: ClientMessage) -> None:
        data = self.codec.encode_client(message)
        await self.ws.send(data.decode() if self.codec.text else data)

    async def send_json(self, value: Any) -> None:
        """Send any value in this client's encoding, valid message or not."""
        if self.codec.text:
            await self.ws.send(msgspec.json.encode(value).decode())
        else:
            await self.ws.send(msgspec.msgpack.encode(value))

    async def recv(self, timeout: float = TIMEOUT) -> ServerMessage:  # noqa: ASYNC109
        """The next server message, whether it came alone or in a batch."""
        while not self.pending:
            async with asyncio.timeout(timeout):
                frame = await self.ws.recv()
            self.frames += 1
            data = frame.encode() if isinstance(frame, str) else frame
            if self.codec.text != isinstance(frame, str):
                raise AssertionError(f"wrong frame kind for {self.codec.encoding}: {frame!r}")
            self.pending.extend(self.codec.decode_server(data))
        return self.pending.popleft()

    async def expect(self, kind: type[M], timeout: float = TIMEOUT) -> M:  # noqa: ASYNC109
        message = await self.recv(timeout)
        if kind is Published:
            # A publisher subscribed to the channel gets its own publication before or after
            # ``published`` (docs/protocol.md): one that came first is left to read after it.
            early = []
            while isinstance(message, Publication):
                early.append(message)
                message = await self.recv(timeout)
            self.pending.extendleft(reversed(early))
        assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
        return message

    def data(self, raw: msgspec.Raw) -> Any:
        return self.codec.decode_payload(raw)


@asynccontextmanager
async def open_client(
    url: str, encoding: Encoding = Encoding.JSON, *, subprotocol: bool = True, **kwargs: Any
) -> AsyncIterator[ProtocolClient]:
    """A connected client that has read its ``welcome``."""
    subprotocols = [Subprotocol(encoding.subprotocol)] if subprotocol else None
    kwargs.setdefault("compression", None)
    async with connect(url, subprotocols=subprotocols, open_timeout=TIMEOUT, **kwargs) as ws:
        client = ProtocolClient(ws, CODECS[encoding])
        client.welcome = await client.expect(Welcome)
        yield client
