"""The backplane interface: where offsets, epochs, history and presence live.

The hub fans publications out to the connections of its own process; a backplane is what makes
every process that serves a channel see the same publications in the same order. It owns the
channel's stream: it assigns each publication its offset atomically with storing it, keeps the
history the namespace asks for, and tells the hub of publications as they happen.

It also carries what is about the whole broker rather than one channel: frames of the plain chat
room (``room_publish``) and control commands every process carries out (``control``, see
``broker.backplane.control``).

Two implementations, one behaviour (the same test suite runs over both):

* ``memory``: one process is the whole broker; the stream is a deque in this process.
* ``redis``: Redis assigns offsets (one Lua script: increment, append to the channel's stream,
  publish), pub/sub carries live publications, Redis Streams hold history, sorted sets presence.

The hub never awaits the backplane: the calls it makes are non-blocking requests (``watch``,
``unwatch``, ``presence_add``, ``presence_remove``, ``announce``), and what comes back arrives as
events through the hub's mailbox (``deliver``). Reads (history, recovery, presence lists) run in
tasks of their own.

Exceptions: ``BackplaneUnavailable`` is the only one a backplane raises on purpose; the client
sees it as ``error`` code ``unavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec
from anyio.abc import TaskStatus

from broker.backplane.control import Control, ControlAnswer, ControlRequest
from broker.settings import NamespaceSettings
from protocol import ClientInfo, Codec, Encoding, Join, Leave, PublicationFrames


class BackplaneUnavailable(Exception):
    """The backplane cannot serve the request now (Redis down, say). A publish that fails with it
    may have been published all the same (the reply is what was lost): a retry with the same
    ``idempotency_key`` is safe."""


class Head(msgspec.Struct, frozen=True, gc=False):
    """A channel's stream position: its epoch and the offset of its latest publication.

    A Struct rather than a frozen dataclass: one is made per publish, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Page:
    """Publications read from a channel's history, oldest first, with the head at read time."""

    head: Head
    publications: list[PublicationFrames]


# --- events from the backplane to the hub -------------------------------------------------------


class LivePublication(msgspec.Struct, gc=False):
    """A publication, as it happens, on a channel the hub watches. A msgspec Struct: made in C,
    once per publication."""

    publication: PublicationFrames


@dataclass(slots=True)
class ChannelHead:
    """Live delivery of ``channel`` is (again) in place, and this was its head at that moment:
    every later publication will arrive as a ``LivePublication``."""

    channel: str
    head: Head


@dataclass(slots=True)
class RemoteAnnouncement:
    """A ``join`` or ``leave`` made on another process."""

    channel: str
    message: Join | Leave


@dataclass(slots=True)
class RoomFrame:
    """A frame for a plain-text room (the chat of ``/ws/chat``) sent on another process."""

    room: str
    payload: bytes


@dataclass(slots=True)
class ControlEvent:
    """A cross-process control request (``broker.backplane.control``) to carry out here and
    answer with ``Backplane.answer``."""

    request: ControlRequest


BackplaneEvent = LivePublication | ChannelHead | RemoteAnnouncement | RoomFrame | ControlEvent
#: Hands an event to the broker, waiting while the hub's mailbox is full.
Deliver = Callable[[BackplaneEvent], Awaitable[None]]
#: Hands a live publication to the hub without waiting, if it can take it now (handles it at
#: once, or queues it with room in its mailbox and nobody waiting for room), and says whether it
#: did; when not, nothing was done (``Deliver`` is the way then).
DeliverNow = Callable[[LivePublication], bool]


class Backplane(Protocol):
    """What the broker needs from a backplane. See the module docstring."""

    kind: str

    @property
    def ready(self) -> bool:
        """Whether publishing and live delivery work right now (``/readyz``)."""

    async def run(
        self,
        deliver: Deliver,
        *,
        task_status: TaskStatus[None],
        deliver_now: DeliverNow | None = None,
    ) -> None:
        """Run until cancelled, handing events to ``deliver``; ``task_status.started()`` once
        the backplane takes requests. ``deliver_now`` hands live publications over without
        waiting (``publish_now``); a backplane that never completes a publish at once ignores
        it."""

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        """Append a publication to ``channel``; returns its offset and epoch once it is in the
        stream (and on its way to every process). With an ``idempotency_key`` already used on
        ``channel`` within ``backplane.idempotency_window``, nothing is published and the first
        publication's head is returned (checked atomically with publishing). Raises
        ``BackplaneUnavailable``."""

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
        idempotency_key: str | None = None,
    ) -> Head | asyncio.Future[Head]:
        """``publish`` without waiting for the result when the backplane can do without: either
        the head at once, or a future that ends with it (or with ``BackplaneUnavailable``), in
        which case ``on_settled`` (which must not raise) is called right after it ends, in the
        task that ends it. Waits only for room in the backplane's bounded queue. Publications of
        successive calls get their offsets in the order of the calls. Raises
        ``BackplaneUnavailable`` when it refuses the publication at once."""

    def publish_now(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head | None:
        """``publish_submit`` when it completes at once, without waiting for anything: the head.
        None when it would have to wait (for a server, for room in the hub's mailbox, for an
        earlier publish waiting for it), and then nothing was done: the caller goes on with
        ``publish_submit``, which keeps the order. Spares the publisher a coroutine per layer
        on the way to the hub. Redis: always None."""

    def watch(self, channel: str) -> Head | None:
        """Start live delivery of ``channel`` to this process. Returns its head when the
        backplane knows it at once; otherwise a ``ChannelHead`` event follows."""

    def unwatch(self, channel: str) -> None:
        """Stop live delivery of ``channel``: nobody on this process wants it any more."""

    async def read(
        self, channel: str, after: int, limit: int | None, options: NamespaceSettings
    ) -> Page:
        """Retained publications with offsets above ``after``, oldest first, at most ``limit``.
        Raises ``BackplaneUnavailable``."""

    async def latest(self, channel: str, limit: int | None, options: NamespaceSettings) -> Page:
        """The latest ``limit`` retained publications (all when None), oldest first."""

    def presence_add(self, channel: str, member: ClientInfo) -> None: ...

    def presence_remove(self, channel: str, member: ClientInfo) -> None: ...

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Every member of ``channel`` on every process. Raises ``BackplaneUnavailable``."""

    def announce(self, channel: str, message: Join | Leave) -> None:
        """Tell the other processes of a ``join`` or ``leave`` made here."""

    def room_publish(self, room: str, payload: bytes) -> None:
        """Send a frame of a plain-text room, delivered here already, to the other processes
        (they get a ``RoomFrame``). Best effort: lost while Redis is unreachable."""

    async def control(self, command: Control) -> list[ControlAnswer]:
        """Have every process of the broker (this one included) carry ``command`` out, and
        return their answers (those in within ``backplane.timeout``). Each process gets a
        ``ControlEvent``. Raises ``BackplaneUnavailable``."""

    def answer(self, answer: ControlAnswer) -> None:
        """Send the answer to a ``ControlEvent``'s request to the process that asked."""
