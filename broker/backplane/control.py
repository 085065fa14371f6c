"""Commands every process of the broker carries out: the cross-process control path.

Some requests are about the whole broker, not the process that takes them: disconnect a client
(wherever it is connected), every connection of a user, subscribe a user to a channel or
unsubscribe it from one, list the channels with subscribers. ``Backplane.control(command)``
sends a ``ControlRequest`` to every process (this one included) and gathers their
``ControlAnswer``s: in memory that is this process alone; on Redis the request goes over the
broker's bus, a pub/sub channel every process listens to (``P:bus``), and the number of
processes that received it (``PUBLISH``'s answer) is the number of answers awaited, within
``backplane.timeout``.

Each process carries a request out locally (``broker.control_handler``) and answers with how many
of its connections it affected, or its channel listing. The types are msgspec Structs, sent as
JSON; nothing here does I/O.
"""

from __future__ import annotations

import anyio
import msgspec

from protocol import StreamPosition


class DisconnectClient(msgspec.Struct, tag="disconnect_client", frozen=True):
    """Close the connection with this client id (4010), on whichever process has it."""

    client: str


class DisconnectUser(msgspec.Struct, tag="disconnect_user", frozen=True):
    """Close every connection of this user id (4010), on every process."""

    user: str


class UnsubscribeUser(msgspec.Struct, tag="unsubscribe_user", frozen=True):
    """Unsubscribe every connection of this user id from ``channel``, on every process."""

    user: str
    channel: str


class SubscribeUser(msgspec.Struct, tag="subscribe_user", frozen=True):
    """Subscribe every connection of this user id to ``channel`` (a server-side subscription),
    on every process; only the connection ``client`` when it is given. With ``since``, from that
    position (the publications after it come with the subscription, when still retained)."""

    user: str
    channel: str
    client: str | None = None
    since: StreamPosition | None = None


class ListChannels(msgspec.Struct, tag="list_channels", frozen=True):
    """Each process's channels with subscribers, and how many it has."""


Control = DisconnectClient | DisconnectUser | SubscribeUser | UnsubscribeUser | ListChannels


class ControlRequest(msgspec.Struct, frozen=True):
    #: Unique per request; answers name it.
    id: str
    #: The process that asked, which gathers the answers.
    origin: str
    command: Control


class ControlAnswer(msgspec.Struct, frozen=True):
    id: str
    #: The process that asked.
    to: str
    #: The process that answers.
    process: str
    #: Connections affected (disconnected, subscribed, unsubscribed).
    count: int = 0
    #: For ``ListChannels``: (channel, subscribers on this process).
    channels: list[tuple[str, int]] = msgspec.field(default_factory=list)


request_encoder = msgspec.json.Encoder()
request_decoder = msgspec.json.Decoder(ControlRequest)
answer_decoder = msgspec.json.Decoder(ControlAnswer)


class Gathering:
    """The answers to one request, as they come; ``wait`` until ``expected`` have."""

    def __init__(self) -> None:
        self.answers: list[ControlAnswer] = []
        self.expected: int | None = None
        self._event = anyio.Event()

    def add(self, answer: ControlAnswer) -> None:
        self.answers.append(answer)
        self._check()

    def expect(self, count: int) -> None:
        self.expected = count
        self._check()

    def _check(self) -> None:
        if self.expected is not None and len(self.answers) >= self.expected:
            self._event.set()

    async def wait(self, timeout: float) -> list[ControlAnswer]:  # noqa: ASYNC109
        """The answers once all are in, or those in after ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        return list(self.answers)
