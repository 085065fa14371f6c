"""Centrifugo's client protocol v2, JSON form, as frozen msgspec Structs (docs/centrifugo.md).

The protocol has no ``type`` tag: a ``Command`` carries an ``id`` and exactly one request field
(``connect``, ``subscribe``, ...), a ``Reply`` carries the same ``id`` and one result field or
``error``, and a push is a ``Reply`` without ``id`` whose ``push`` names a ``channel`` and holds one
of ``pub``, ``join``, ``leave``, ``unsubscribe``, ``subscribe``, ``disconnect``, ... An empty
``{}`` is the server's ping, and the client's ``{}`` answers it (the pong).

Field names and numbers follow ``client.proto`` of Centrifugo's protocol definitions; this is an
independent implementation of the wire form, not generated code. ``data`` fields are raw JSON
(``msgspec.Raw``): in the JSON protocol a payload is any JSON value embedded as it is.

In requests, an absent ``data`` decodes as an empty ``msgspec.Raw`` (``Raw | None`` would accept
only ``null``); results leave ``data`` out with None.

Everything is encoded with ``omit_defaults`` like Centrifugo's own JSON (Go's ``omitempty``):
``false``, ``0``, ``""`` and empty lists and maps are left out, and the SDKs read an absent field
as its zero value. The exceptions are Centrifugo's too: ``ClientInfo``, ``PresenceResult``,
``PresenceStatsResult`` and ``HistoryResult`` write every field (an SDK reads
``num_clients: 0`` and an empty ``presence`` map, not their absence). Unknown fields are ignored
on decoding, as Centrifugo does.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

#: Command ids are uint32; 0 (or absent) means no reply is expected.
CommandId = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
#: msgspec decodes integers up to 2**64 - 1, the range of uint64.
Uint64 = Annotated[int, msgspec.Meta(ge=0)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class _Struct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


# --- shared ---------------------------------------------------------------------------------------


class ClientInfo(_Struct, frozen=True, omit_defaults=False):
    """Who published, joined or left; ``user`` and ``client`` are always written, as Centrifugo
    does (``conn_info`` and ``chan_info`` are never set here, so they are not fields)."""

    user: str = ""
    client: str = ""


class StreamPosition(_Struct, frozen=True):
    offset: Uint64 = 0
    epoch: str = ""


class Publication(_Struct, frozen=True):
    data: msgspec.Raw
    info: ClientInfo | None = None
    offset: Uint64 = 0
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class Error(_Struct, frozen=True):
    code: int
    message: str
    temporary: bool = False


# --- requests (client to server) -----------------------------------------------------------------


class SubscribeRequest(_Struct, frozen=True):
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: Uint64 = 0
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    flag: int = 0


class ConnectRequest(_Struct, frozen=True):
    token: str = ""
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    #: Positions of the server-side subscriptions the client had, for their recovery.
    subs: dict[str, SubscribeRequest] = msgspec.field(default_factory=dict)
    name: str = ""
    version: str = ""
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class UnsubscribeRequest(_Struct, frozen=True):
    channel: str = ""


class PublishRequest(_Struct, frozen=True):
    channel: str = ""
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class PresenceRequest(_Struct, frozen=True):
    channel: str = ""


class PresenceStatsRequest(_Struct, frozen=True):
    channel: str = ""


class HistoryRequest(_Struct, frozen=True):
    channel: str = ""
    limit: Int32 = 0
    since: StreamPosition | None = None
    reverse: bool = False


class PingRequest(_Struct, frozen=True):
    pass


class SendRequest(_Struct, frozen=True):
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class RPCRequest(_Struct, frozen=True):
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    method: str = ""


class RefreshRequest(_Struct, frozen=True):
    token: str = ""


class SubRefreshRequest(_Struct, frozen=True):
    channel: str = ""
    token: str = ""


class Command(_Struct, frozen=True):
    """One client command: an ``id`` and at most one request. None at all is the pong."""

    id: CommandId = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: UnsubscribeRequest | None = None
    publish: PublishRequest | None = None
    presence: PresenceRequest | None = None
    presence_stats: PresenceStatsRequest | None = None
    history: HistoryRequest | None = None
    ping: PingRequest | None = None
    send: SendRequest | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None


#: The request fields of ``Command``, in the order of ``client.proto``.
REQUEST_FIELDS: tuple[str, ...] = tuple(f for f in Command.__struct_fields__ if f != "id")


def requests_of(command: Command) -> list[str]:
    """The names of the request fields set in ``command`` (a valid command has at most one)."""
    return [name for name in REQUEST_FIELDS if getattr(command, name) is not None]


# --- results (server to client) -------------------------------------------------------------------


class SubscribeResult(_Struct, frozen=True):
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: list[Publication] = msgspec.field(default_factory=list)
    recovered: bool = False
    offset: Uint64 = 0
    positioned: bool = False
    data: msgspec.Raw | None = None
    was_recovering: bool = False
    delta: bool = False


class ConnectResult(_Struct, frozen=True):
    client: str
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: msgspec.Raw | None = None
    subs: dict[str, SubscribeResult] = msgspec.field(default_factory=dict)
    #: Seconds between the server's pings; with ``pong`` the client answers each with ``{}``.
    ping: int = 0
    pong: bool = False
    session: str = ""
    node: str = ""


class UnsubscribeResult(_Struct, frozen=True):
    pass


class PublishResult(_Struct, frozen=True):
    pass


class PresenceResult(_Struct, frozen=True, omit_defaults=False):
    presence: dict[str, ClientInfo] = msgspec.field(default_factory=dict)


class PresenceStatsResult(_Struct, frozen=True, omit_defaults=False):
    num_clients: int = 0
    num_users: int = 0


class HistoryResult(_Struct, frozen=True, omit_defaults=False):
    publications: list[Publication] = msgspec.field(default_factory=list)
    epoch: str = ""
    offset: Uint64 = 0


class PingResult(_Struct, frozen=True):
    pass


class RefreshResult(_Struct, frozen=True):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0


class SubRefreshResult(_Struct, frozen=True):
    expires: bool = False
    ttl: int = 0


# --- pushes (server to client, no id) ------------------------------------------------------------


class Join(_Struct, frozen=True):
    info: ClientInfo


class Leave(_Struct, frozen=True):
    info: ClientInfo


class Unsubscribe(_Struct, frozen=True):
    """The server ended a subscription: below 2500 for good, from 2500 the SDK resubscribes."""

    code: int
    reason: str = ""


class Subscribe(_Struct, frozen=True):
    """The server subscribed the client to ``channel`` after connect (a server-side
    subscription); its publications follow as pushes naming the channel."""

    recoverable: bool = False
    epoch: str = ""
    offset: Uint64 = 0
    positioned: bool = False
    data: msgspec.Raw | None = None


class Disconnect(_Struct, frozen=True):
    code: int
    reason: str = ""
    reconnect: bool = False


class Refresh(_Struct, frozen=True):
    expires: bool = False
    ttl: int = 0


class Message(_Struct, frozen=True):
    data: msgspec.Raw


class Push(_Struct, frozen=True):
    channel: str = ""
    pub: Publication | None = None
    join: Join | None = None
    leave: Leave | None = None
    unsubscribe: Unsubscribe | None = None
    message: Message | None = None
    subscribe: Subscribe | None = None
    disconnect: Disconnect | None = None
    refresh: Refresh | None = None


class Reply(_Struct, frozen=True):
    """An answer to the command with the same ``id``, or (without ``id``) a push or a ping."""

    id: CommandId = 0
    error: Error | None = None
    push: Push | None = None
    connect: ConnectResult | None = None
    subscribe: SubscribeResult | None = None
    unsubscribe: UnsubscribeResult | None = None
    publish: PublishResult | None = None
    presence: PresenceResult | None = None
    presence_stats: PresenceStatsResult | None = None
    history: HistoryResult | None = None
    ping: PingResult | None = None
    refresh: RefreshResult | None = None
    sub_refresh: SubRefreshResult | None = None


#: The server's ping: an empty reply (the client's pong is an empty command).
PING: Reply = Reply()
