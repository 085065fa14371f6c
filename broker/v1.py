"""The reader of ``/v1/ws``: client frames in, hub commands (or direct replies) out.

docs/protocol.md §1. Answers it can give alone (``pong``, ``error`` for a bad frame or rate limit)
go straight to the connection's outbox; everything touching channels goes to the hub. A bad frame
never ends the connection: it gets ``error`` ``bad_request``. Only the wrong frame kind for the
negotiated encoding (1003) and an oversized message (1009) close it.

Authentication (broker/auth/session.py) comes first: ``welcome`` is sent once the connection's
identity is known, from the handshake or a ``connect`` message, followed by the identity's
server-side subscriptions. Every ``subscribe``, ``publish``, ``history`` and ``presence`` is then
checked against the identity (``Auth.permit``), unless nothing can forbid it (no authentication,
no ``authorize`` hook, no user-limited channel): that check is a few attribute reads.

On the Redis backplane the reader does not wait for a publish's result before it reads the next
frame (``Broker.publish_submit``, docs/scaleout.md): the reply follows from a callback, and the
replies to publishes, with the errors the reader makes itself, leave in the order of the requests.
In memory a publish is done at once, without a coroutine on the way to the hub
(``Backplane.publish_now``), unless it would wait for room in the hub's mailbox.

Under ``broker serve`` a message that arrives while the reader waits is offered to ``take_now``
before it is queued: a ``ping`` or a ``publish`` that needs no wait is handled in the protocol's
callback, without a turn of the reader's task; everything else is deferred to the task in order
(docs/design.md, "Messages taken at once").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial

import msgspec

from broker.auth import Action, Refused
from broker.auth.session import ConnectionAuth
from broker.backplane import BackplaneUnavailable, Head
from broker.connection import Connection
from broker.conversion import UnconvertibleData, convert_for_subscribers
from broker.handshake_memory import forget_handshake
from broker.hub import (
    HistoryCommand,
    PresenceCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from broker.logs import get_logger
from broker.ratelimit import TokenBucket
from broker.runtime import Broker
from broker.settings import NamespaceSettings
from protocol import (
    ClientMessage,
    CloseCode,
    Codec,
    Connect,
    DecodeFailure,
    Encoding,
    Error,
    ErrorCode,
    History,
    Ping,
    Pong,
    Presence,
    Publish,
    Published,
    Refresh,
    Subscribe,
    Unsubscribe,
    Welcome,
    is_valid_channel,
    namespace_of,
)

log = get_logger("broker.v1")

#: ``Action.PUBLISH``, looked up once: on Python 3.11 an attribute of an ``Enum`` class goes
#: through ``EnumType.__getattr__`` (about 800 instructions), twice per publish otherwise.
_PUBLISH = Action.PUBLISH
_UNAVAILABLE = "the broker cannot publish right now; a retry with the same idempotency_key is safe"
#: A publish whose result is not known yet (its future, ``id`` and channel), or a reply frame
#: waiting for the replies to earlier publishes.
_Held = tuple["asyncio.Future[Head]", int | None, str] | bytes


class V1Reader:
    """Reads one ``/v1/ws`` connection."""

    __slots__ = (
        "auth",
        "broker",
        "bucket",
        "codec",
        "connection",
        "held",
        "hub",
        "idle_timer",
        "open_checks",
        "strikes",
    )

    def __init__(self, connection: Connection, broker: Broker, codec: Codec) -> None:
        self.connection = connection
        self.broker = broker
        self.hub = broker.hub
        self.codec = codec
        limits = connection.settings.limits
        self.bucket = (
            TokenBucket(limits.publish_rate, limits.publish_burst)
            if limits.publish_rate > 0
            else None
        )
        self.strikes = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        #: Replies waiting for an earlier publish's result (``publish``); None while none is.
        self.held: deque[_Held] | None = None
        self.auth = ConnectionAuth(connection, broker.auth, codec)
        #: No authentication and no ``authorize`` hook: only user-limited channels need a look.
        self.open_checks = not broker.auth.enforced and broker.auth.authorize is None

    async def welcome(self) -> None:
        """Send ``welcome`` and make the identity's server-side subscriptions."""
        connection = self.connection
        websocket_settings = connection.settings.websocket
        identity = self.auth.identity
        assert identity is not None
        subs = list(dict.fromkeys(c for c in identity.subs if is_valid_channel(c)))
        welcome = Welcome(
            client=connection.id,
            heartbeat=websocket_settings.heartbeat,
            max_message_bytes=websocket_settings.max_message_bytes,
            user=identity.user,
            expires_at=identity.expires_at,
            subs=subs,
        )
        connection.send_frame(self.codec.encode(welcome))
        # Written now rather than after this turn: the transport holds the handshake's 101
        # response for it (``HOLD_RESPONSE``), and both leave in one TCP segment.
        connection.outbox.flush()
        for channel in subs:
            # Answered with ``subscribed`` id 0 (docs/protocol.md, "Authentication").
            await self.hub.submit(
                SubscribeCommand(connection.subscriber, Subscribe(id=0, channel=channel))
            )

    async def run(self) -> None:
        # One coroutine, not two: its frame stays suspended for as long as the connection lives.
        connection = self.connection
        websocket_settings = connection.settings.websocket
        try:
            opened = await self.auth.open()
            # The handshake's token was looked for: nothing reads its headers any more.
            forget_handshake(connection.websocket)
            if opened:
                await self.welcome()
            idle_timeout = connection.settings.limits.idle_timeout
            if idle_timeout > 0:
                # A timer, not a task: a sleeping task per connection costs memory for nothing.
                self.idle_timer = asyncio.get_running_loop().call_later(
                    idle_timeout, self.close_if_idle, idle_timeout
                )
            await connection.receive_loop(
                self.on_text,
                self.on_bytes,
                heartbeat=websocket_settings.heartbeat + websocket_settings.heartbeat_grace,
                take_now=self.take_now,
            )
        finally:
            if self.idle_timer is not None:
                self.idle_timer.cancel()
            self.auth.close()

    def close_if_idle(self, idle_timeout: float) -> None:
        """Close the connection once it has had no subscription for ``idle_timeout`` seconds;
        otherwise look again when it could next be so."""
        since = self.connection.subscriber.idle_since
        remaining = idle_timeout if since is None else since + idle_timeout - time.monotonic()
        if remaining <= 0:
            log.info("connection.idle_timeout", idle_timeout=idle_timeout)
            self.connection.request_close(CloseCode.POLICY_VIOLATION)
            self.idle_timer = None
            return
        self.idle_timer = asyncio.get_running_loop().call_later(
            remaining, self.close_if_idle, idle_timeout
        )

    async def on_text(self, text: str) -> None:
        if not self.codec.text:
            self.connection.protocol_error("protocol.wrong_frame_kind", received="text")
            self.connection.request_close(CloseCode.UNSUPPORTED_DATA)
            return
        # Decoded from the ``str`` as it is: no copy to ``bytes`` (``Codec.decode_client``).
        await self.handle(text)

    async def on_bytes(self, data: bytes) -> None:
        if self.codec.text:
            self.connection.protocol_error("protocol.wrong_frame_kind", received="binary")
            self.connection.request_close(CloseCode.UNSUPPORTED_DATA)
            return
        await self.handle(data)

    async def handle(self, frame: bytes | str) -> None:
        message = self.codec.decode_client(frame)
        if self.auth.identity is None:
            if await self.auth.on_first(message):
                await self.welcome()
            return
        await self.carry_out(message)

    def take_now(self, text: str | None, data: bytes | None) -> bool:
        """A message offered before it is queued, while the reader waits for one
        (``Reader.take_message``): whether it took it. A ``ping`` is answered and a
        ``publish`` made here when nothing makes it wait (in memory, open to publishing, no
        earlier reply pending); whatever must wait, and every other request, is deferred to
        the reader's task (``Connection.defer``), in order. Declined (nothing done) before
        authentication and for the wrong kind of frame: the reader's own way handles those."""
        frame = text if self.codec.text else data
        if frame is None or self.auth.identity is None:
            return False
        message = self.codec.decode_client(frame)
        if isinstance(message, Ping):
            self.connection.send_frame(self.codec.encode(Pong(id=message.id)))
        elif isinstance(message, Publish):
            self.publish_taken(message)
        else:
            self.connection.defer(partial(self.carry_out, message))
        return True

    async def carry_out(self, message: ClientMessage | DecodeFailure) -> None:
        """Carry out one request of an authenticated client."""
        match message:
            case Publish():
                await self.publish(message)
            case Subscribe():
                if await self.permitted(message.id, message.channel, Action.SUBSCRIBE, message):
                    await self.hub.submit(SubscribeCommand(self.connection.subscriber, message))
            case Unsubscribe():
                await self.hub.submit(UnsubscribeCommand(self.connection.subscriber, message))
            case Ping(id=request_id):
                self.connection.send_frame(self.codec.encode(Pong(id=request_id)))
            case History():
                if await self.permitted(message.id, message.channel, Action.HISTORY):
                    await self.hub.submit(HistoryCommand(self.connection.subscriber, message))
            case Presence():
                if await self.permitted(message.id, message.channel, Action.PRESENCE):
                    await self.hub.submit(PresenceCommand(self.connection.subscriber, message))
            case Refresh():
                reply = await self.auth.refresh(message)
                if reply is not None:
                    self.reply(reply)
            case Connect(id=request_id):
                # Authenticated already (by the handshake, or no authentication): nothing to do,
                # except saying so to a client that brings a token the broker will not look at.
                if message.token is not None and self.broker.auth.verifier is not None:
                    self.error(request_id, ErrorCode.BAD_REQUEST, "already connected")
            case DecodeFailure(id=request_id, message=text):
                self.connection.protocol_error("protocol.bad_request", detail=text[:200])
                self.error(request_id, ErrorCode.BAD_REQUEST, text)

    async def publish(self, message: Publish) -> None:
        held = self.held
        limit = self.broker.settings.backplane.publish_queue
        while held is not None and len(held) >= limit:
            # Bounded memory: at most ``publish_queue`` publishes of one connection pending (with
            # several Redis servers one slow server could otherwise let the others' replies pile
            # up behind it). The reader waits, as for a full pipeline.
            head = held[0]
            if isinstance(head, bytes):
                self.settle()
            else:
                await asyncio.wait((head[0],))
            held = self.held
        rest = self._publish_now(message)
        if rest is not None:
            await rest()

    def publish_taken(self, message: Publish) -> None:
        """``publish`` for a message taken at once (``take_now``): what it can do without
        waiting is done here; the rest is deferred to the reader's task, in order."""
        held = self.held
        if held is not None and len(held) >= self.broker.settings.backplane.publish_queue:
            self.connection.defer(partial(self.publish, message))
            return
        rest = self._publish_now(message)
        if rest is not None:
            self.connection.defer(rest)

    def _publish_now(self, message: Publish) -> Callable[[], Awaitable[None]] | None:
        """The steps of a publish that need no wait, done now: the rate limit, the namespace's
        check, the conversion and, in memory, the publish itself. None when that was all (done,
        or refused and answered); otherwise the rest, for the caller to await or defer: a
        permission check, or the backplane's pipeline."""
        if self._rate_limited(message):
            return None
        channel = message.channel
        # Looked up once, for the open check and for the backplane (about 1,800 instructions).
        options = self.connection.settings.namespace(namespace_of(channel))
        if not self.open_to(channel, _PUBLISH, options):
            return partial(self._publish_permitted, message, options)
        converted = self._publish_at_once(message, options)
        return None if converted is None else partial(self._submit, message, converted)

    def _rate_limited(self, message: Publish) -> bool:
        """Whether the publish rate limit refuses ``message`` (answered, or the connection
        closed after too many strikes)."""
        if self.bucket is not None and not self.bucket.take():
            self.strikes += 1
            if self.strikes >= self.connection.settings.limits.rate_limit_strikes:
                self.connection.protocol_error("protocol.rate_limit_abuse", strikes=self.strikes)
                self.connection.request_close(CloseCode.RATE_LIMIT_ABUSE)
                return True
            self.hub.instruments.rate_limited += 1
            self.error(message.id, ErrorCode.RATE_LIMITED, "publish rate limit exceeded")
            return True
        self.strikes = 0
        return False

    async def _publish_permitted(self, message: Publish, options: NamespaceSettings) -> None:
        if not await self.permitted(message.id, message.channel, _PUBLISH):
            return
        converted = self._publish_at_once(message, options)
        if converted is not None:
            await self._submit(message, converted)

    def _publish_at_once(
        self, message: Publish, options: NamespaceSettings
    ) -> dict[Encoding, msgspec.Raw] | None:
        """Check that every encoding can carry the payload, and publish it if that needs no
        wait (in memory: no coroutine on the way to the hub). None when it is done: published
        and answered, or refused. Otherwise the converted payloads, for ``_submit``."""
        try:
            converted = convert_for_subscribers(message.data, self.codec)
        except UnconvertibleData as exc:
            self.error(message.id, ErrorCode.BAD_REQUEST, str(exc))
            return None
        try:
            head = self.broker.backplane.publish_now(
                message.channel,
                message.data,
                self.codec,
                self.connection.subscriber.user or self.connection.id,
                options,
                converted,
                message.idempotency_key,
            )
        except BackplaneUnavailable:
            self.error(message.id, ErrorCode.UNAVAILABLE, _UNAVAILABLE)
            return None
        if head is None:
            return converted
        self._published(message, head)
        return None

    def _published(self, message: Publish, head: Head) -> None:
        if message.id is not None:
            published = Published(
                id=message.id, channel=message.channel, offset=head.offset, epoch=head.epoch
            )
            self.reply(self.codec.encode(published))

    async def _submit(self, message: Publish, converted: dict[Encoding, msgspec.Raw]) -> None:
        """The publish through the backplane's pipeline (Redis), or after a wait for room in the
        hub's mailbox."""
        channel = message.channel
        try:
            outcome: Head | asyncio.Future[Head] = await self.broker.publish_submit(
                channel,
                message.data,
                self.codec,
                self.connection.subscriber.user or self.connection.id,
                converted,
                self.settle,
                message.idempotency_key,
            )
        except BackplaneUnavailable:
            self.error(message.id, ErrorCode.UNAVAILABLE, _UNAVAILABLE)
            return
        if isinstance(outcome, Head):  # done already (the memory backplane)
            self._published(message, outcome)
            return
        # Pipelined (Redis): read the next frame now; the reply follows from ``settle``, which
        # the pipeline calls once the result is known (a callback, not a task: memory per
        # connection). Nothing settles it before this returns: the pipeline's task has not run.
        held = self.held
        if held is None:
            held = self.held = deque()
        held.append((outcome, message.id, channel))

    def open_to(
        self, channel: str, action: Action, options: NamespaceSettings | None = None
    ) -> bool:
        """Whether no check is needed: no authentication, no hook, not a user-limited channel,
        and (to publish) a namespace clients may publish in. The fast path of every request.
        ``options``: the channel's namespace settings, when the caller has them already."""
        return (
            self.open_checks
            and "#" not in channel
            and (
                action is not _PUBLISH
                or (
                    options or self.connection.settings.namespace(namespace_of(channel))
                ).allow_publish
            )
        )

    async def permitted(
        self,
        request_id: int | None,
        channel: str,
        action: Action,
        request: Subscribe | None = None,
        *,
        subscription_token: bool = False,
    ) -> bool:
        """Whether this connection may ``action`` on ``channel``; if not, answers
        ``permission_denied``. ``subscription_token``: the caller checked one already."""
        auth = self.broker.auth
        if self.open_to(channel, action):
            return True
        identity = self.auth.identity
        assert identity is not None
        if request is not None and request.token is not None and auth.verifier is not None:
            try:
                granted, _ = await auth.verifier.subscription(request.token, identity.user)
                if granted != channel:
                    raise Refused(f"subscription token for another channel than {channel!r}")
            except Refused as refusal:
                self.error(request_id, ErrorCode.PERMISSION_DENIED, refusal.reason)
                return False
            subscription_token = True
        reason = await auth.permit(
            identity,
            channel,
            action,
            subscribed=channel in self.connection.subscriber.channels,
            subscription_token=subscription_token,
        )
        if reason is None:
            return True
        self.error(request_id, ErrorCode.PERMISSION_DENIED, reason)
        return False

    def settle(self) -> None:
        """Send the replies of the publishes whose results are known, and the replies held
        behind them, up to the first publish still pending: replies leave in publish order.

        Called by the backplane when a pending publish's future ends. It never raises: a
        failure is logged and the next reply goes on. Once the connection is gone its outbox
        refuses the frames, so a late result costs nothing."""
        held = self.held
        while held:
            item = held[0]
            if not isinstance(item, bytes) and not item[0].done():
                return
            held.popleft()
            try:
                frame = item if isinstance(item, bytes) else self._outcome(*item)
                if frame is not None:
                    self.connection.send_frame(frame)
            except Exception:
                log.exception("publish.reply_failed", client=self.connection.id)
        self.held = None

    def _outcome(
        self, future: asyncio.Future[Head], request_id: int | None, channel: str
    ) -> bytes | None:
        """The reply to a publish whose future is done; None for a success without ``id``."""
        error = BackplaneUnavailable("cancelled") if future.cancelled() else future.exception()
        if error is None:
            if request_id is None:
                return None
            head = future.result()
            published = Published(
                id=request_id, channel=channel, offset=head.offset, epoch=head.epoch
            )
            return self.codec.encode(published)
        if not isinstance(error, BackplaneUnavailable):
            log.error("publish.failed", client=self.connection.id, channel=channel, exc_info=error)
        message = Error(id=request_id, code=ErrorCode.UNAVAILABLE, message=_UNAVAILABLE)
        return self.codec.encode(message)

    def error(self, request_id: int | None, code: ErrorCode, text: str) -> None:
        self.reply(self.codec.encode(Error(id=request_id, code=code, message=text)))

    def reply(self, frame: bytes) -> None:
        """Send a reply made by the reader, after the replies to earlier publishes."""
        held = self.held
        if held is None:
            self.connection.send_frame(frame)
            return
        held.append(frame)
        settings = self.broker.settings
        connection = self.connection
        limit = settings.backplane.publish_queue + settings.queue.max_messages
        if len(held) > limit and connection.close_request is None:
            # Only bad frames, each answered at once, can get here (``publish`` waits for room):
            # more replies held than an outbox takes. As when replies overflow the outbox
            # (broker/outbox.py), the client is dropped as a slow consumer; the reader reads no
            # more frames once the close is requested.
            connection.slow_consumer = "replies_held"
            log.warning("connection.slow_consumer", cause="replies_held", held=len(held))
            connection.request_close(CloseCode.SLOW_CONSUMER)
