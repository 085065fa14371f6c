"""What the hub knows of a connection (``Subscriber``), and one-shot replies (``Reply``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from broker.outbox import Outbox
from protocol import CODECS, ClientInfo, Codec, Encoding

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Subscriber:
    """What the hub knows of one connection. Identity is the object itself."""

    id: str
    #: The connection's wire encoding; None for the plain-text chat endpoint.
    encoding: Encoding | None
    outbox: Outbox
    user: str | None = None
    #: Shown to others in presence (the ``info`` claim); fixed for the connection's life.
    details: dict[str, Any] | None = None
    #: Channels this connection is subscribed to (or subscribing); owned by the hub.
    channels: set[str] = field(default_factory=set)
    detached: bool = False
    #: ``time.monotonic()`` since which it has had no subscription; None while it has one.
    idle_since: float | None = field(default_factory=time.monotonic)

    def codec(self) -> Codec:
        assert self.encoding is not None
        return CODECS[self.encoding]

    def info(self) -> ClientInfo:
        return ClientInfo(client=self.id, user=self.user, info=self.details)


class Reply(Generic[T]):
    """A one-shot answer from the hub to a caller that waits for it (the HTTP API)."""

    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        assert self._value is not None
        return self._value
