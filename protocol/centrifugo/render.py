"""The broker's own server messages (protocol/messages.py) as Centrifugo replies and pushes.

The hub speaks the broker's protocol; a Centrifugo connection renders what the hub sends it.
Most messages render alone (a publication, ``join``, ``published``); a few need to know which
Centrifugo command they answer, which the connection notes in its ``RequestBook`` when it sends
the command to the hub: the options of a ``subscribe`` (whether it was recovering, whether the
channel keeps history), whether a presence read answers ``presence`` or ``presence_stats``, and
whether a history read was asked for newest first (``reverse``).

A ``gap``, or a publication from a stream whose epoch is not the one the subscribe reply named
(the stream was lost and started again), has no Centrifugo form: the subscriber must recover.
It renders as ``InsufficientState``, on which the connection disconnects with 3010
"insufficient state" so that the SDK reconnects and recovers, as Centrifugo does.

Server-side subscriptions (a connection token's ``subs``) are subscribes the reader sends for
the client, with ids above the uint32 range of Centrifugo's command ids (``INTERNAL_IDS``): their
``subscribed`` answers are gathered into the connect reply's ``subs`` (``ConnectAssembly``), which
renders once the last has come. An unsubscribe the reader sends when a subscription token
expires renders as an ``unsubscribe`` push (2501 "subscription expired"); the hub's own
server-side unsubscribe (id 0) as one with 2000 "server unsubscribe".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from protocol import messages as ours
from protocol.centrifugo import messages as theirs
from protocol.centrifugo.codes import (
    SERVER_UNSUBSCRIBE,
    TEMPORARY_ERRORS,
    CentrifugoError,
    UnsubscribeCode,
    disconnect_for,
    error_code,
)
from protocol.errors import ErrorCode

#: Ids of the requests a connection makes itself (not its client's): above uint32, the range of
#: Centrifugo's command ids, so they never meet a client's.
INTERNAL_IDS: Final = 2**32


@dataclass(frozen=True, slots=True)
class InsufficientState:
    """Publications of ``channel`` were lost for this client: it must reconnect and recover."""

    channel: str


@dataclass(frozen=True, slots=True)
class ServerSubscribed:
    """A server-side subscription made after connect: its ``subscribe`` push, then the
    publications it recovered as ``pub`` pushes, in order."""

    replies: tuple[theirs.Reply, ...]


def _no_history(channel: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class SubscribeNote:
    was_recovering: bool
    recoverable: bool
    #: Seconds the subscription token has left (0: no expiry).
    ttl: int = 0


@dataclass(slots=True)
class ConnectAssembly:
    """A connect reply waiting for the answers to its server-side subscribes (by internal id)."""

    request_id: int
    result: theirs.ConnectResult
    #: Internal subscribe id -> channel, still unanswered.
    waiting: dict[int, str]
    subs: dict[str, theirs.SubscribeResult] = field(default_factory=dict)
    #: The channels the hub refused, and why (for the logs).
    refused: dict[str, str] = field(default_factory=dict)

    def reply(self) -> theirs.Reply:
        result = msgspec.structs.replace(self.result, subs=self.subs)
        return theirs.Reply(id=self.request_id, connect=result)


@dataclass(slots=True)
class RequestBook:
    """What one connection remembers of the commands it sent to the hub, by command id."""

    subscribes: dict[int, SubscribeNote] = field(default_factory=dict)
    #: The epoch of each subscribed channel's stream, as its subscribe reply said.
    epochs: dict[str, str] = field(default_factory=dict)
    presence_stats: set[int] = field(default_factory=set)
    reverse_history: set[int] = field(default_factory=set)
    #: History reads with a ``since``: the epoch it named (another one is error 112).
    history_epochs: dict[int, str] = field(default_factory=dict)
    #: The connect reply being assembled from server-side subscribes, if any.
    connect: ConnectAssembly | None = None
    #: Unsubscribes the connection made itself (internal id -> the push's code).
    unsubscribes: dict[int, UnsubscribeCode] = field(default_factory=dict)
    #: Whether a channel's namespace keeps history (``recoverable`` and ``positioned`` of a
    #: server-side subscription made after connect, which no command of the client's noted).
    recoverable: Callable[[str], bool] = _no_history


def client_info(client: str, user: str | None) -> theirs.ClientInfo:
    return theirs.ClientInfo(client=client, user=user or "")


def publication(message: ours.Publication) -> theirs.Publication:
    info = None if message.from_ is None else theirs.ClientInfo(client=message.from_)
    return theirs.Publication(data=message.data, info=info, offset=message.offset)


def publication_push(message: ours.Publication) -> theirs.Reply:
    return theirs.Reply(push=theirs.Push(channel=message.channel, pub=publication(message)))


def disconnect_push(code: int, reason: str, reconnect: bool) -> theirs.Reply:
    mapped = disconnect_for(code, reason, reconnect)
    disconnect = theirs.Disconnect(
        code=mapped.code, reason=mapped.reason, reconnect=mapped.reconnect
    )
    return theirs.Reply(push=theirs.Push(disconnect=disconnect))


def error_reply(request_id: int, code: str, message: str) -> theirs.Reply:
    mapped = error_code(code)
    temporary = mapped in TEMPORARY_ERRORS
    return theirs.Reply(
        id=request_id, error=theirs.Error(code=mapped, message=message, temporary=temporary)
    )


def server_subscribed(message: ours.Subscribed, recoverable: bool) -> ServerSubscribed:
    """The ``subscribe`` push of a server-side subscription made after connect, and the
    publications it recovered (a subscribe from a position) as ``pub`` pushes."""
    subscribe = theirs.Subscribe(
        recoverable=recoverable,
        positioned=recoverable,
        epoch=message.epoch,
        offset=message.offset,
    )
    push = theirs.Reply(push=theirs.Push(channel=message.channel, subscribe=subscribe))
    recovered = [publication_push(p) for p in message.publications] if message.recovered else []
    return ServerSubscribed((push, *recovered))


def render(
    message: ours.ServerMessage, book: RequestBook
) -> theirs.Reply | ServerSubscribed | InsufficientState | None:
    """``message`` as Centrifugo would send it; None when it has no Centrifugo form."""
    match message:
        case ours.Publication(channel=channel, epoch=epoch):
            if book.epochs.get(channel, epoch) != epoch:
                # The stream was lost and started again: the SDK's position means nothing now.
                return InsufficientState(channel)
            return publication_push(message)
        case ours.Subscribed(id=request_id):
            book.epochs[message.channel] = message.epoch
            if request_id == 0:
                # No command of the client's: the operator subscribed it (the HTTP API).
                return server_subscribed(message, book.recoverable(message.channel))
            note = book.subscribes.pop(request_id, SubscribeNote(False, False))
            result = theirs.SubscribeResult(
                expires=note.ttl > 0,
                ttl=note.ttl,
                recoverable=note.recoverable,
                positioned=note.recoverable,
                epoch=message.epoch,
                offset=message.offset,
                recovered=message.recovered,
                was_recovering=note.was_recovering,
                publications=[publication(p) for p in message.publications],
            )
            assembly = book.connect
            if assembly is not None and request_id in assembly.waiting:
                assembly.subs[assembly.waiting.pop(request_id)] = result
                return _assembled(book)
            return theirs.Reply(id=request_id, subscribe=result)
        case ours.Unsubscribed(id=request_id, channel=channel):
            book.epochs.pop(channel, None)
            code = book.unsubscribes.pop(request_id, None)
            if request_id == 0:
                code = SERVER_UNSUBSCRIBE  # the hub's own (an operator's) unsubscribe
            if code is not None:
                unsubscribe = theirs.Unsubscribe(code=code.code, reason=code.reason)
                return theirs.Reply(push=theirs.Push(channel=channel, unsubscribe=unsubscribe))
            return theirs.Reply(id=request_id, unsubscribe=theirs.UnsubscribeResult())
        case ours.Published(id=request_id):
            return theirs.Reply(id=request_id, publish=theirs.PublishResult())
        case ours.HistoryResult(id=request_id):
            since_epoch = book.history_epochs.pop(request_id, "")
            if since_epoch and since_epoch != message.epoch:
                book.reverse_history.discard(request_id)
                error = theirs.Error(
                    code=CentrifugoError.UNRECOVERABLE_POSITION, message="unrecoverable position"
                )
                return theirs.Reply(id=request_id, error=error)
            publications = [publication(p) for p in message.publications]
            if request_id in book.reverse_history:
                book.reverse_history.discard(request_id)
                publications.reverse()
            return theirs.Reply(
                id=request_id,
                history=theirs.HistoryResult(
                    publications=publications, epoch=message.epoch, offset=message.offset
                ),
            )
        case ours.PresenceResult(id=request_id, clients=clients):
            if request_id in book.presence_stats:
                book.presence_stats.discard(request_id)
                stats = theirs.PresenceStatsResult(
                    num_clients=len(clients), num_users=len({c.user or "" for c in clients})
                )
                return theirs.Reply(id=request_id, presence_stats=stats)
            presence = {c.client: client_info(c.client, c.user) for c in clients}
            return theirs.Reply(id=request_id, presence=theirs.PresenceResult(presence=presence))
        case ours.Join(channel=channel, client=client, user=user):
            join = theirs.Join(info=client_info(client, user))
            return theirs.Reply(push=theirs.Push(channel=channel, join=join))
        case ours.Leave(channel=channel, client=client, user=user):
            leave = theirs.Leave(info=client_info(client, user))
            return theirs.Reply(push=theirs.Push(channel=channel, leave=leave))
        case ours.Gap(channel=channel):
            return InsufficientState(channel)
        case ours.Disconnect(code=code, reason=reason, reconnect=reconnect):
            return disconnect_push(code, reason, reconnect)
        case ours.Error(id=request_id, code=code, message=text):
            if not request_id:
                # Centrifugo has no error without a command to answer; id 0 is a server-side
                # subscribe the hub refused (the client subscribed meanwhile, or is at its
                # limit): nothing changed for the client.
                return None
            book.subscribes.pop(request_id, None)
            book.presence_stats.discard(request_id)
            book.reverse_history.discard(request_id)
            book.history_epochs.pop(request_id, None)
            if request_id in book.unsubscribes:
                del book.unsubscribes[request_id]
                return None  # the subscription had ended already
            assembly = book.connect
            if assembly is not None and request_id in assembly.waiting:
                assembly.refused[assembly.waiting.pop(request_id)] = f"{code}: {text}"
                return _assembled(book)
            if code == ErrorCode.NOT_SUBSCRIBED:
                # Centrifugo answers an unsubscribe from a channel one is not in with success.
                return theirs.Reply(id=request_id, unsubscribe=theirs.UnsubscribeResult())
            return error_reply(request_id, code, text)
        case ours.Pong(id=request_id):
            return theirs.Reply(id=request_id, ping=theirs.PingResult())
        case _:  # welcome: the connect reply is made by the connection itself
            return None


def _assembled(book: RequestBook) -> theirs.Reply | None:
    """The connect reply once its last server-side subscribe is answered; None before."""
    assembly = book.connect
    if assembly is None or assembly.waiting:
        return None
    book.connect = None
    return assembly.reply()
