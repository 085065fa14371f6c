"""Centrifugo's error and disconnect codes, and how the broker's own map onto them.

Error codes (100-112) answer one command; the connection stays. Disconnect codes are sent in a
``disconnect`` push and as the WebSocket close code: 3000-3499 (and 4000-4499) tell the SDKs to
reconnect, 3500-3999 (and 4500-4999) not to. The table beside the broker's own is in
docs/centrifugo.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocol.errors import CloseCode, ErrorCode


class CentrifugoError(enum.IntEnum):
    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    EXPIRED = 110
    TOO_MANY_REQUESTS = 111
    UNRECOVERABLE_POSITION = 112


#: Errors the SDKs retry by themselves (``temporary`` in the error).
TEMPORARY_ERRORS: frozenset[CentrifugoError] = frozenset(
    {CentrifugoError.INTERNAL, CentrifugoError.TOO_MANY_REQUESTS}
)

#: The broker's ``error`` codes as Centrifugo error codes. ``not_subscribed`` is absent: Centrifugo
#: answers an unsubscribe from a channel one is not subscribed to with success.
ERROR_CODES: dict[ErrorCode, CentrifugoError] = {
    ErrorCode.BAD_REQUEST: CentrifugoError.BAD_REQUEST,
    ErrorCode.PERMISSION_DENIED: CentrifugoError.PERMISSION_DENIED,
    ErrorCode.UNAUTHORIZED: CentrifugoError.UNAUTHORIZED,
    ErrorCode.ALREADY_SUBSCRIBED: CentrifugoError.ALREADY_SUBSCRIBED,
    ErrorCode.LIMIT_EXCEEDED: CentrifugoError.LIMIT_EXCEEDED,
    ErrorCode.RATE_LIMITED: CentrifugoError.TOO_MANY_REQUESTS,
    ErrorCode.UNAVAILABLE: CentrifugoError.INTERNAL,
    ErrorCode.INTERNAL: CentrifugoError.INTERNAL,
}


def error_code(code: str) -> CentrifugoError:
    """The Centrifugo error code for one of the broker's ``error`` codes (internal if unknown)."""
    try:
        return ERROR_CODES[ErrorCode(code)]
    except (ValueError, KeyError):
        return CentrifugoError.INTERNAL


@dataclass(frozen=True, slots=True)
class UnsubscribeCode:
    """The code of an ``unsubscribe`` push: below 2500 for good, from 2500 the SDK resubscribes."""

    code: int
    reason: str


SERVER_UNSUBSCRIBE = UnsubscribeCode(2000, "server unsubscribe")
#: The subscription token expired and no ``sub_refresh`` moved it: the SDK resubscribes, with a
#: new token.
SUBSCRIPTION_EXPIRED = UnsubscribeCode(2501, "subscription expired")


@dataclass(frozen=True, slots=True)
class DisconnectCode:
    code: int
    reason: str
    reconnect: bool


SHUTDOWN = DisconnectCode(3001, "shutdown", True)
INTERNAL_SERVER_ERROR = DisconnectCode(3004, "internal server error", True)
CONNECTION_EXPIRED = DisconnectCode(3005, "connection expired", True)
SLOW = DisconnectCode(3008, "slow", True)
INSUFFICIENT_STATE = DisconnectCode(3010, "insufficient state", True)
NO_PONG = DisconnectCode(3012, "no pong", True)
TOO_MANY_REQUESTS = DisconnectCode(3013, "too many requests", True)
INVALID_TOKEN = DisconnectCode(3500, "invalid token", False)
BAD_REQUEST = DisconnectCode(3501, "bad request", False)
STALE = DisconnectCode(3502, "stale", False)
FORCE_NO_RECONNECT = DisconnectCode(3503, "force disconnect", False)
#: The broker's connection limit asks clients to come back later; Centrifugo's own 3504 is
#: terminal, so a code of the application's reconnecting range (4000-4499) says it instead.
TRY_AGAIN_LATER = DisconnectCode(4013, "connection limit reached, try again later", True)

#: The broker's close codes as Centrifugo disconnects.
DISCONNECTS: dict[CloseCode, DisconnectCode] = {
    CloseCode.NORMAL: FORCE_NO_RECONNECT,
    CloseCode.GOING_AWAY: SHUTDOWN,
    CloseCode.UNSUPPORTED_DATA: BAD_REQUEST,
    CloseCode.POLICY_VIOLATION: STALE,
    CloseCode.MESSAGE_TOO_BIG: DisconnectCode(3501, "message too big", False),
    CloseCode.INTERNAL_ERROR: INTERNAL_SERVER_ERROR,
    CloseCode.TRY_AGAIN_LATER: TRY_AGAIN_LATER,
    CloseCode.UNAUTHORIZED: INVALID_TOKEN,
    CloseCode.SLOW_CONSUMER: SLOW,
    CloseCode.HEARTBEAT_TIMEOUT: NO_PONG,
    CloseCode.DISCONNECTED_BY_OPERATOR: FORCE_NO_RECONNECT,
    CloseCode.RATE_LIMIT_ABUSE: TOO_MANY_REQUESTS,
}


def disconnect_for(code: int, reason: str, reconnect: bool) -> DisconnectCode:
    """The Centrifugo disconnect for a close with the broker's ``code``; a code that is not the
    broker's (already Centrifugo's, or a parser's close such as 1002) keeps its own terms, with
    codes below 3000 made a reconnecting internal error or a terminal bad request."""
    if code == CloseCode.UNAUTHORIZED and reconnect:
        return CONNECTION_EXPIRED  # a token that expired: refresh or reconnect with a new one
    try:
        return DISCONNECTS[CloseCode(code)]
    except ValueError:
        pass
    if code >= 3000:
        return DisconnectCode(code, reason, reconnect)
    return DisconnectCode(BAD_REQUEST.code, reason or BAD_REQUEST.reason, False)
