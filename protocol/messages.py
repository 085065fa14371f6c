"""Every message of docs/protocol.md §1 as a frozen, tagged msgspec Struct.

Two tagged unions on the ``type`` field, one per direction: ``ClientMessage`` (client to server)
and ``ServerMessage`` (server to client). ``data`` is ``msgspec.Raw``: the broker passes a
publication's bytes through without decoding them whenever the encodings match.

Unknown fields are ignored, not forbidden, on purpose: a newer client may send a field an older
broker does not know yet, as Centrifugo and Phoenix allow, and schema evolution only ever adds
fields with defaults. Unknown ``type`` values are still rejected (``bad_request``).

Server messages keep every field on the wire, defaults and nulls included (no ``omit_defaults``),
because the contract lists ``from`` and ``user`` as present-but-null rather than absent.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from protocol.channels import Channel

PROTOCOL_VERSION: Final = "1"

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
#: A publisher's name for one publication, so that a retry is not published twice: 1 to 128
#: printable ASCII characters, no spaces.
IdempotencyKey = Annotated[str, msgspec.Meta(pattern=r"^[!-~]{1,128}\Z")]


class Message(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every message; ``type`` is the tag."""


class StreamPosition(msgspec.Struct, frozen=True, kw_only=True):
    """A point in a channel's history: the last ``offset`` seen in stream ``epoch``."""

    offset: Offset
    epoch: str


class ClientInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One member of a channel's presence."""

    client: str
    user: str | None = None
    #: The ``info`` claim of the member's connection token: shown to the others.
    info: dict[str, Any] | None = None


# --- client to server ---------------------------------------------------------------------------


class Subscribe(Message, tag="subscribe", frozen=True):
    id: RequestId
    channel: Channel
    since: StreamPosition | None = None
    #: A subscription token, for the channels of a private namespace.
    token: str | None = None


class Unsubscribe(Message, tag="unsubscribe", frozen=True):
    id: RequestId
    channel: Channel


class Publish(Message, tag="publish", frozen=True):
    channel: Channel
    data: msgspec.Raw
    id: RequestId | None = None
    #: A repeat of a key within the broker's idempotency window is answered with the first
    #: publication's offset and epoch, and not published again.
    idempotency_key: IdempotencyKey | None = None


class History(Message, tag="history", frozen=True):
    id: RequestId
    channel: Channel
    since: StreamPosition | None = None
    limit: Limit | None = None


class Presence(Message, tag="presence", frozen=True):
    id: RequestId
    channel: Channel


class Ping(Message, tag="ping", frozen=True):
    id: RequestId


class Connect(Message, tag="connect", frozen=True):
    """The first message, carrying the connection token when the handshake did not."""

    id: RequestId | None = None
    token: str | None = None


class Refresh(Message, tag="refresh", frozen=True):
    """A new connection token for the same user, before the current one expires."""

    id: RequestId
    token: str


ClientMessage = Subscribe | Unsubscribe | Publish | History | Presence | Ping | Connect | Refresh


# --- server to client ---------------------------------------------------------------------------


class Welcome(Message, tag="welcome", frozen=True):
    client: str
    heartbeat: float
    max_message_bytes: int
    version: str = PROTOCOL_VERSION
    #: The user id (the token's ``sub``); None when anonymous.
    user: str | None = None
    #: When the connection's token expires (unix seconds); None when it does not.
    expires_at: float | None = None
    #: The channels the server subscribes this connection to right after ``welcome`` (its
    #: token's ``subs``); each is announced with ``subscribed`` with ``id`` 0.
    subs: list[str] = msgspec.field(default_factory=list)


class Publication(Message, tag="message", frozen=True):
    """A publication on a subscribed channel (wire type ``message``)."""

    channel: str
    offset: int
    epoch: str
    data: msgspec.Raw
    from_: str | None = msgspec.field(default=None, name="from")


class Subscribed(Message, tag="subscribed", frozen=True):
    id: int
    channel: str
    epoch: str
    offset: int
    recovered: bool = False
    publications: list[Publication] = msgspec.field(default_factory=list)


class Unsubscribed(Message, tag="unsubscribed", frozen=True):
    id: int
    channel: str


class Published(Message, tag="published", frozen=True):
    id: int
    channel: str
    offset: int
    epoch: str


class HistoryResult(Message, tag="history", frozen=True):
    """Reply to ``history`` (wire type ``history``, like the request)."""

    id: int
    channel: str
    epoch: str
    offset: int
    publications: list[Publication] = msgspec.field(default_factory=list)


class PresenceResult(Message, tag="presence", frozen=True):
    """Reply to ``presence`` (wire type ``presence``, like the request)."""

    id: int
    channel: str
    clients: list[ClientInfo] = msgspec.field(default_factory=list)


class Pong(Message, tag="pong", frozen=True):
    id: int


class Refreshed(Message, tag="refreshed", frozen=True):
    """Reply to ``refresh``: the connection now expires at ``expires_at``."""

    id: int
    expires_at: float | None = None


class Join(Message, tag="join", frozen=True):
    channel: str
    client: str
    user: str | None = None


class Leave(Message, tag="leave", frozen=True):
    channel: str
    client: str
    user: str | None = None


class Gap(Message, tag="gap", frozen=True):
    """This connection skipped publications ``from_offset`` to ``to_offset`` (inclusive)."""

    channel: str
    from_offset: int
    to_offset: int


class Disconnect(Message, tag="disconnect", frozen=True):
    code: int
    reason: str
    reconnect: bool
    retry_after: float = 0.0


class Error(Message, tag="error", frozen=True):
    id: int | None
    code: str
    message: str


ServerMessage = (
    Welcome
    | Subscribed
    | Unsubscribed
    | Published
    | HistoryResult
    | PresenceResult
    | Pong
    | Refreshed
    | Publication
    | Join
    | Leave
    | Gap
    | Disconnect
    | Error
)
