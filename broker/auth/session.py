"""One ``/v1/ws`` connection's authentication: the handshake or ``connect``, ``refresh``, expiry.

States: the identity is known from the handshake (the reader sends ``welcome`` at once), or the
connection waits for a ``connect`` message, at most ``auth.connect_timeout`` seconds; anything
else first, or nothing, closes it with 4001. A refused credential closes with ``disconnect``
{4001, the reason, ``reconnect`` false unless retrying can help} and 4001; the log line says why
(``auth.refused``) and never holds the token. An expiring identity gets a timer: at ``exp`` the
connection closes with {4001, "token expired", ``reconnect`` true} unless a ``refresh`` moved it.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from broker.auth import Auth
from broker.auth.identity import Identity, Refused
from broker.client_faults import client_faults
from broker.connection import Connection
from broker.logs import get_logger
from protocol import CloseCode, Codec, Connect, Error, ErrorCode, Refresh, Refreshed

log = get_logger("broker.auth")


class ConnectionAuth:
    __slots__ = ("auth", "codec", "connection", "identity", "timer")

    def __init__(self, connection: Connection, auth: Auth, codec: Codec) -> None:
        self.connection = connection
        self.auth = auth
        self.codec = codec
        #: None until the connection is authenticated.
        self.identity: Identity | None = None
        #: The ``connect`` deadline, then the expiry.
        self.timer: asyncio.TimerHandle | None = None

    async def open(self) -> bool:
        """Authenticate from the handshake; True once known (send ``welcome``), False while a
        ``connect`` is awaited or the connection is refused."""
        try:
            identity = await self.auth.identity_from_handshake(self.connection.websocket)
        except Refused as refusal:
            self.refuse(refusal.reason, reconnect=refusal.reconnect)
            return False
        if identity is None:
            self.timer = asyncio.get_running_loop().call_later(
                self.auth.settings.connect_timeout, self._connect_timed_out
            )
            return False
        return self.adopt(identity)

    def _connect_timed_out(self) -> None:
        self.timer = None
        if self.identity is None:
            self.refuse("no connect message in time")

    async def on_first(self, message: object) -> bool:
        """Handle the first message while ``connect`` is awaited; True once authenticated."""
        if not isinstance(message, Connect):
            self.refuse("expected connect first")
            return False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            identity = await self.auth.identity_from_connect(message.token)
        except Refused as refusal:
            self.refuse(refusal.reason, reconnect=refusal.reconnect)
            return False
        return self.adopt(identity)

    def adopt(self, identity: Identity) -> bool:
        """Take ``identity`` for this connection; False (and refused) if it expired already."""
        if self.connection.close_request is not None:
            return False
        self.identity = identity
        subscriber = self.connection.subscriber
        subscriber.user = identity.user
        subscriber.details = identity.info
        if identity.user is not None:
            # Every later line of this connection, ``connection.closed`` included, names the user.
            structlog.contextvars.bind_contextvars(user=identity.user)
            # Debug: the connection's canonical line (``connection.closed``) carries ``user``.
            log.debug("auth.authenticated", expires_at=identity.expires_at)
        return self._schedule_expiry(identity.expires_at)

    def _schedule_expiry(self, expires_at: float | None) -> bool:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if expires_at is None:
            return True
        remaining = expires_at + self.auth.settings.leeway - time.time()
        if remaining <= 0:
            self.expire()
            return False
        self.timer = asyncio.get_running_loop().call_later(remaining, self.expire)
        return True

    def expire(self) -> None:
        self.timer = None
        log.info("auth.expired", user=self.connection.subscriber.user)
        self.connection.request_close(
            CloseCode.UNAUTHORIZED, reason="token expired", reconnect=True
        )

    async def refresh(self, message: Refresh) -> bytes | None:
        """The reply to ``refresh`` (``refreshed``), or None after refusing it (``error``
        ``unauthorized`` sent, close 4001 requested)."""
        current = self.identity
        assert current is not None
        try:
            if self.auth.verifier is None:
                raise Refused("this broker does not use tokens")
            identity = await self.auth.verifier.identity(message.token)
            if identity.user != current.user:
                raise Refused("refresh token of another user")
        except Refused as refusal:
            error = Error(id=message.id, code=ErrorCode.UNAUTHORIZED, message=refusal.reason)
            self.connection.send_frame(self.codec.encode(error))
            self.refuse(refusal.reason, reconnect=refusal.reconnect, flush=True)
            return None
        # Permissions follow the new token; presence info stays what it was at connect.
        self.identity = Identity(
            user=identity.user,
            channels=identity.channels,
            publish=identity.publish,
            info=current.info,
            subs=current.subs,
            expires_at=identity.expires_at,
            extra=current.extra,
        )
        if not self._schedule_expiry(identity.expires_at):
            return None
        return self.codec.encode(Refreshed(id=message.id, expires_at=identity.expires_at))

    def refuse(self, reason: str, *, reconnect: bool = False, flush: bool = False) -> None:
        """Close with 4001 for ``reason``; ``flush`` sends what is queued (a reply) first."""
        client_faults.info("auth.refused", reason=reason, remote=self.connection.remote)
        self.connection.request_close(
            CloseCode.UNAUTHORIZED, reason=reason, reconnect=reconnect, flush=flush
        )

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
