"""The error-code and close-code tables of docs/protocol.md §1.

Nothing here raises: the sans-I/O core reports a problem as a value (an ``ErrorCode`` for an
``error`` reply, a ``CloseCode`` for a close frame) and the I/O layer acts on it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """``code`` of an ``error`` reply; the connection stays open."""

    BAD_REQUEST = "bad_request"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHORIZED = "unauthorized"
    NOT_SUBSCRIBED = "not_subscribed"
    ALREADY_SUBSCRIBED = "already_subscribed"
    LIMIT_EXCEEDED = "limit_exceeded"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the broker sends (RFC 6455 §7.4 plus the 4000-4999 private range)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4001
    SLOW_CONSUMER = 4008
    HEARTBEAT_TIMEOUT = 4009
    DISCONNECTED_BY_OPERATOR = 4010
    RATE_LIMIT_ABUSE = 4029


#: The ``reason`` sent with each close code; short, as a close frame's reason is at most 123 bytes.
CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "normal close",
    CloseCode.GOING_AWAY: "server shutting down",
    CloseCode.UNSUPPORTED_DATA: "wrong frame kind for the negotiated encoding",
    CloseCode.POLICY_VIOLATION: "idle: no subscription",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.TRY_AGAIN_LATER: "connection limit reached, try again later",
    CloseCode.UNAUTHORIZED: "unauthorized",
    CloseCode.SLOW_CONSUMER: "slow consumer",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat timeout",
    CloseCode.DISCONNECTED_BY_OPERATOR: "disconnected by operator",
    CloseCode.RATE_LIMIT_ABUSE: "rate limit abuse",
}


#: Close codes after which a client should reconnect (after ``retry_after``) and recover: the
#: server went away, was full, or dropped the client for falling behind or going silent.
RECONNECT_CODES: frozenset[CloseCode] = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.SLOW_CONSUMER,
        CloseCode.HEARTBEAT_TIMEOUT,
    }
)
