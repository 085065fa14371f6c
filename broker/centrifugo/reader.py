"""The reader of ``/connection/websocket``: Centrifugo commands in, hub commands (or replies) out.

It is the ``/v1/ws`` reader (``V1Reader``) with Centrifugo's commands in front: publishing goes
through the same rate limit, permission check, payload conversion and pipelined replies; every
channel command becomes the same hub command a ``/v1/ws`` client's would. What the hub answers
is rendered on the way out (``broker.centrifugo.connection``).

The first command must be ``connect`` (anything else: 3501 "bad request"); a connection that
sends none within ``websocket.heartbeat`` seconds is closed as stale (3502). Once connected, the
server sends an empty ``{}`` ping every ``websocket.heartbeat`` seconds and the SDK answers
``{}``; a client silent for ``heartbeat + heartbeat_grace`` is closed (3012 "no pong").

Server-side subscriptions: the channels of the connection token's ``subs`` claim are subscribed
at ``connect`` (recovering from the positions the SDK sends in ``connect.subs``), and their
results make the connect reply's ``subs`` (assembled by the connection, ``RequestBook.connect``).
A subscription made with a subscription token that expires ends at ``exp`` (plus
``auth.leeway``) unless a ``sub_refresh`` moved it: an ``unsubscribe`` push with 2501
"subscription expired", on which the SDK resubscribes with a new token.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from importlib.metadata import PackageNotFoundError, version

from broker.auth import Action, Refused
from broker.centrifugo.connection import CentrifugoConnection
from broker.centrifugo.tokens import verify_connect, verify_sub_refresh
from broker.hub import (
    Command,
    HistoryCommand,
    PresenceCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from broker.logs import get_logger
from broker.runtime import Broker
from broker.v1 import V1Reader
from protocol import (
    CHANNEL_RULE,
    JSON,
    History,
    Presence,
    Publish,
    Refresh,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    is_valid_channel,
    namespace_of,
)
from protocol.centrifugo import messages as cf
from protocol.centrifugo.codes import (
    BAD_REQUEST,
    INTERNAL_SERVER_ERROR,
    INVALID_TOKEN,
    STALE,
    SUBSCRIPTION_EXPIRED,
    CentrifugoError,
    DisconnectCode,
)
from protocol.centrifugo.framing import BadCommand, decode_commands, encode_reply
from protocol.centrifugo.render import INTERNAL_IDS, ConnectAssembly, SubscribeNote

log = get_logger("broker.centrifugo")

try:
    SERVER_VERSION = version("broker")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without metadata
    SERVER_VERSION = ""

_MAX_OFFSET = 2**63 - 1
_PING = b"{}"


class CentrifugoReader(V1Reader):
    """Reads one ``/connection/websocket`` connection."""

    __slots__ = ("internal_ids", "ping_timer", "stale_timer", "sub_expiry", "tasks")

    connection: CentrifugoConnection

    def __init__(self, connection: CentrifugoConnection, broker: Broker) -> None:
        super().__init__(connection, broker, JSON)
        self.ping_timer: asyncio.TimerHandle | None = None
        self.stale_timer: asyncio.TimerHandle | None = None
        #: The expiry timers of subscriptions made with an expiring subscription token.
        self.sub_expiry: dict[str, asyncio.TimerHandle] = {}
        #: Ids of the requests the connection makes itself (server-side subscribes, expiries).
        self.internal_ids = itertools.count(INTERNAL_IDS)
        #: Hub submissions started from timers (kept until done).
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        connection = self.connection
        websocket_settings = connection.settings.websocket
        loop = asyncio.get_running_loop()
        self.stale_timer = loop.call_later(websocket_settings.heartbeat, self.close_if_stale)
        try:
            await connection.receive_loop(
                self.on_text,
                self.on_bytes,
                heartbeat=websocket_settings.heartbeat + websocket_settings.heartbeat_grace,
            )
        finally:
            for timer in (self.stale_timer, self.ping_timer, self.idle_timer):
                if timer is not None:
                    timer.cancel()
            for timer in self.sub_expiry.values():
                timer.cancel()
            self.sub_expiry.clear()

    # --- timers -----------------------------------------------------------------------------

    def close_if_stale(self) -> None:
        self.stale_timer = None
        if self.auth.identity is None:
            log.info("centrifugo.stale", detail="no connect command in time")
            self.close(STALE)

    def ping(self) -> None:
        """The server's ping: ``{}``, which the SDK answers with ``{}``."""
        if self.connection.close_request is not None:
            self.ping_timer = None
            return
        self.connection.send_frame(_PING)
        self.ping_timer = asyncio.get_running_loop().call_later(
            self.connection.settings.websocket.heartbeat, self.ping
        )

    # --- frames -----------------------------------------------------------------------------

    async def on_bytes(self, data: bytes) -> None:
        # Protobuf framing travels in binary frames; only JSON is spoken here.
        self.connection.protocol_error("centrifugo.binary_frame", detail="Protobuf not supported")
        self.close(BAD_REQUEST)

    async def handle(self, frame: bytes | str) -> None:
        # A text frame comes as it was read (``V1Reader.on_text``); its lines are split as bytes.
        data = frame.encode() if isinstance(frame, str) else frame
        for command in decode_commands(data):
            if self.connection.close_request is not None:
                return
            await self.dispatch(command)

    def close(self, code: DisconnectCode) -> None:
        self.connection.close_with(code)

    def answer(self, reply: cf.Reply) -> None:
        self.reply(encode_reply(reply))

    def fail(self, request_id: int, code: CentrifugoError, message: str) -> None:
        error = cf.Error(code=code, message=message)
        self.answer(cf.Reply(id=request_id, error=error))

    async def dispatch(self, command: cf.Command | BadCommand) -> None:
        if isinstance(command, BadCommand):
            self.connection.protocol_error("centrifugo.bad_command", detail=command.message[:200])
            if command.id:
                self.fail(command.id, CentrifugoError.BAD_REQUEST, command.message)
            else:
                self.close(BAD_REQUEST)
            return
        requests = cf.requests_of(command)
        request_id = command.id
        if not requests:
            if request_id:
                self.fail(request_id, CentrifugoError.BAD_REQUEST, "a command needs a request")
            return  # ``{}``: the pong; receiving it is all that counts
        if len(requests) > 1:
            self.connection.protocol_error("centrifugo.bad_command", detail="several requests")
            self.fail(request_id, CentrifugoError.BAD_REQUEST, "one request per command")
            return
        kind = requests[0]
        if kind == "send":
            return  # asynchronous messages to the server have no handler here
        if request_id == 0:
            self.connection.protocol_error("centrifugo.bad_command", detail=f"{kind} without id")
            self.close(BAD_REQUEST)
            return
        if self.auth.identity is None:
            if kind != "connect":
                self.connection.protocol_error("centrifugo.not_connected", command=kind)
                self.close(BAD_REQUEST)
                return
            assert command.connect is not None
            await self.connect(request_id, command.connect)
            return
        match kind:
            case "subscribe":
                assert command.subscribe is not None
                await self.subscribe(request_id, command.subscribe)
            case "unsubscribe":
                assert command.unsubscribe is not None
                await self.unsubscribe(request_id, command.unsubscribe.channel)
            case "publish":
                assert command.publish is not None
                await self.publish_command(request_id, command.publish)
            case "presence" | "presence_stats":
                request = command.presence or command.presence_stats
                assert request is not None
                await self.presence(request_id, request.channel, stats=kind == "presence_stats")
            case "history":
                assert command.history is not None
                await self.history(request_id, command.history)
            case "ping":
                self.answer(cf.Reply(id=request_id, ping=cf.PingResult()))
            case "refresh":
                assert command.refresh is not None
                await self.refresh(request_id, command.refresh.token)
            case "sub_refresh":
                assert command.sub_refresh is not None
                await self.sub_refresh(request_id, command.sub_refresh)
            case "rpc":
                self.fail(request_id, CentrifugoError.NOT_AVAILABLE, "RPC is not supported")
            case _:  # a second connect
                self.connection.protocol_error("centrifugo.bad_command", detail="connect twice")
                self.close(BAD_REQUEST)

    # --- connection ---------------------------------------------------------------------------

    async def connect(self, request_id: int, request: cf.ConnectRequest) -> None:
        connection = self.connection
        try:
            identity = await verify_connect(self.broker.auth, request.token)
        except Refused as refusal:
            log.info("centrifugo.connect_refused", reason=refusal.reason)
            self.close(INTERNAL_SERVER_ERROR if refusal.reconnect else INVALID_TOKEN)
            return
        if not self.auth.adopt(identity):
            return
        if self.stale_timer is not None:
            self.stale_timer.cancel()
            self.stale_timer = None
        # The SDK's name and version, kept for the logs (bounded: they are the client's words).
        log.info(
            "centrifugo.connected",
            sdk=request.name[:64],
            sdk_version=request.version[:64],
            user=identity.user,
        )
        heartbeat = connection.settings.websocket.heartbeat
        expires, ttl = _expiry(identity.expires_at)
        result = cf.ConnectResult(
            client=connection.id,
            version=SERVER_VERSION,
            expires=expires,
            ttl=ttl,
            ping=max(1, round(heartbeat)),
            pong=True,
        )
        subs = [channel for channel in identity.subs if is_valid_channel(channel)]
        if subs:
            await self.server_side_subscribe(request_id, result, subs, request.subs)
        else:
            self.answer(cf.Reply(id=request_id, connect=result))
        loop = asyncio.get_running_loop()
        self.ping_timer = loop.call_later(heartbeat, self.ping)
        idle_timeout = connection.settings.limits.idle_timeout
        if idle_timeout > 0:
            self.idle_timer = loop.call_later(idle_timeout, self.close_if_idle, idle_timeout)

    async def server_side_subscribe(
        self,
        request_id: int,
        result: cf.ConnectResult,
        channels: list[str],
        positions: dict[str, cf.SubscribeRequest],
    ) -> None:
        """Subscribe the token's ``subs`` (no permission check: the token grants them, as on
        ``/v1/ws``), recovering where the SDK says it was; the connection sends the connect
        reply with their results once the hub has answered them all."""
        connection = self.connection
        settings = connection.settings
        ids = {next(self.internal_ids): channel for channel in dict.fromkeys(channels)}
        book = connection.book
        book.connect = ConnectAssembly(request_id=request_id, result=result, waiting=dict(ids))
        for internal_id, channel in ids.items():
            position = positions.get(channel)
            since = None
            recover = position is not None and position.recover
            if position is not None and recover and position.offset <= _MAX_OFFSET:
                since = StreamPosition(offset=position.offset, epoch=position.epoch)
            options = settings.namespace(namespace_of(channel))
            book.subscribes[internal_id] = SubscribeNote(
                was_recovering=recover, recoverable=options.history_size > 0
            )
            subscribe = Subscribe(id=internal_id, channel=channel, since=since)
            await self.hub.submit(SubscribeCommand(connection.subscriber, subscribe))

    async def refresh(self, request_id: int, token: str) -> None:
        # The broker's own refresh: same user, new permissions and expiry; a refusal answers
        # ``unauthorized`` (101) and closes (3500).
        if await self.auth.refresh(Refresh(id=request_id, token=token)) is None:
            return
        identity = self.auth.identity
        assert identity is not None
        expires, ttl = _expiry(identity.expires_at)
        result = cf.RefreshResult(
            client=self.connection.id, version=SERVER_VERSION, expires=expires, ttl=ttl
        )
        self.answer(cf.Reply(id=request_id, refresh=result))

    async def sub_refresh(self, request_id: int, request: cf.SubRefreshRequest) -> None:
        identity = self.auth.identity
        assert identity is not None
        try:
            expires_at = await verify_sub_refresh(
                self.broker.auth, identity, request.channel, request.token
            )
        except Refused as refusal:
            self.fail(request_id, _token_error(refusal), refusal.reason)
            return
        if request.channel in self.sub_expiry:
            self.expire_subscription_at(request.channel, expires_at)
        expires, ttl = _expiry(expires_at)
        result = cf.SubRefreshResult(expires=expires, ttl=ttl)
        self.answer(cf.Reply(id=request_id, sub_refresh=result))

    # --- channels -----------------------------------------------------------------------------

    def valid_channel(self, request_id: int, channel: str) -> bool:
        if is_valid_channel(channel):
            return True
        self.fail(request_id, CentrifugoError.UNKNOWN_CHANNEL, f"expected {CHANNEL_RULE}")
        return False

    async def subscribe(self, request_id: int, request: cf.SubscribeRequest) -> None:
        channel = request.channel
        if not self.valid_channel(request_id, channel):
            return
        settings = self.connection.settings
        since = None
        if request.recover:
            if request.offset > _MAX_OFFSET:
                self.fail(request_id, CentrifugoError.BAD_REQUEST, "offset out of range")
                return
            since = StreamPosition(offset=request.offset, epoch=request.epoch)
        subscribe = Subscribe(id=request_id, channel=channel, since=since)
        expires_at: float | None = None
        verifier = self.broker.auth.verifier
        if request.token and verifier is not None:
            # The token is checked here, once, for its expiry too.
            identity = self.auth.identity
            assert identity is not None
            try:
                expires_at = await verify_sub_refresh(
                    self.broker.auth, identity, channel, request.token
                )
            except Refused as refusal:
                self.fail(request_id, _token_error(refusal), refusal.reason)
                return
            allowed = await self.permitted(
                request_id, channel, Action.SUBSCRIBE, subscription_token=True
            )
        else:
            allowed = await self.permitted(request_id, channel, Action.SUBSCRIBE, subscribe)
        if not allowed:
            return
        options = settings.namespace(namespace_of(channel))
        self.connection.book.subscribes[request_id] = SubscribeNote(
            was_recovering=request.recover,
            recoverable=options.history_size > 0,
            ttl=_expiry(expires_at)[1],
        )
        if expires_at is not None and channel not in self.connection.subscriber.channels:
            # (Subscribed already: the hub refuses this one, and the first token still counts.)
            self.expire_subscription_at(channel, expires_at)
        await self.hub.submit(SubscribeCommand(self.connection.subscriber, subscribe))

    # --- subscription expiry ------------------------------------------------------------------

    def expire_subscription_at(self, channel: str, expires_at: float | None) -> None:
        """End the subscription to ``channel`` at ``expires_at`` plus ``auth.leeway`` (None:
        never)."""
        timer = self.sub_expiry.pop(channel, None)
        if timer is not None:
            timer.cancel()
        if expires_at is None:
            return
        delay = max(0.0, expires_at + self.broker.auth.settings.leeway - time.time())
        loop = asyncio.get_running_loop()
        self.sub_expiry[channel] = loop.call_later(delay, self.subscription_expired, channel)

    def subscription_expired(self, channel: str) -> None:
        self.sub_expiry.pop(channel, None)
        connection = self.connection
        if connection.close_request is not None:
            return
        if channel not in connection.subscriber.channels:
            return  # the subscribe failed, or the client left meanwhile
        log.info("centrifugo.subscription_expired", channel=channel)
        internal_id = next(self.internal_ids)
        connection.book.unsubscribes[internal_id] = SUBSCRIPTION_EXPIRED
        unsubscribe = Unsubscribe(id=internal_id, channel=channel)
        self.submit_later(UnsubscribeCommand(connection.subscriber, unsubscribe))

    def submit_later(self, command: Command) -> None:
        """Queue ``command`` for the hub from a timer (a task while the mailbox is full)."""
        task = asyncio.get_running_loop().create_task(self.hub.submit(command))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def unsubscribe(self, request_id: int, channel: str) -> None:
        timer = self.sub_expiry.pop(channel, None)
        if timer is not None:
            timer.cancel()
        if not is_valid_channel(channel):
            # Never subscribed, then: Centrifugo answers success.
            self.answer(cf.Reply(id=request_id, unsubscribe=cf.UnsubscribeResult()))
            return
        unsubscribe = Unsubscribe(id=request_id, channel=channel)
        await self.hub.submit(UnsubscribeCommand(self.connection.subscriber, unsubscribe))

    async def publish_command(self, request_id: int, request: cf.PublishRequest) -> None:
        if not self.valid_channel(request_id, request.channel):
            return
        if not request.data:
            self.fail(request_id, CentrifugoError.BAD_REQUEST, "publish needs data")
            return
        await self.publish(Publish(channel=request.channel, data=request.data, id=request_id))

    async def presence(self, request_id: int, channel: str, *, stats: bool) -> None:
        if not self.valid_channel(request_id, channel):
            return
        if not self.connection.settings.namespace(namespace_of(channel)).presence:
            message = f"presence is not enabled in namespace {namespace_of(channel)!r}"
            self.fail(request_id, CentrifugoError.NOT_AVAILABLE, message)
            return
        if not await self.permitted(request_id, channel, Action.PRESENCE):
            return
        if stats:
            self.connection.book.presence_stats.add(request_id)
        presence = Presence(id=request_id, channel=channel)
        await self.hub.submit(PresenceCommand(self.connection.subscriber, presence))

    async def history(self, request_id: int, request: cf.HistoryRequest) -> None:
        channel = request.channel
        if not self.valid_channel(request_id, channel):
            return
        if self.connection.settings.namespace(namespace_of(channel)).history_size == 0:
            message = f"history is not enabled in namespace {namespace_of(channel)!r}"
            self.fail(request_id, CentrifugoError.NOT_AVAILABLE, message)
            return
        if not await self.permitted(request_id, channel, Action.HISTORY):
            return
        if request.limit < -1:
            self.fail(request_id, CentrifugoError.BAD_REQUEST, "limit must be -1 (all) or more")
            return
        # Centrifugo: 0 asks for the stream position only, -1 for everything retained.
        limit: int | None = None if request.limit == -1 else request.limit
        since = request.since
        position: StreamPosition | None = None
        if since is not None and since.offset > _MAX_OFFSET:
            self.fail(request_id, CentrifugoError.BAD_REQUEST, "offset out of range")
            return
        if request.reverse:
            self.connection.book.reverse_history.add(request_id)
            if since is not None:
                # Newest first from just before ``since``: read that range oldest first, and
                # the rendering reverses it.
                before = max(0, since.offset - 1)
                count = before if limit is None else min(limit, before)
                position = StreamPosition(offset=before - count, epoch=since.epoch)
                limit = count
        elif since is not None:
            position = StreamPosition(offset=since.offset, epoch=since.epoch)
        if since is not None and since.epoch:
            # A position in another stream than the channel's: error 112 (the rendering).
            self.connection.book.history_epochs[request_id] = since.epoch
        history = History(id=request_id, channel=channel, since=position, limit=limit)
        await self.hub.submit(HistoryCommand(self.connection.subscriber, history))


def _token_error(refusal: Refused) -> CentrifugoError:
    """109 for an expired token (the SDK fetches a new one and retries), else 103."""
    if refusal.reason == "token expired":
        return CentrifugoError.TOKEN_EXPIRED
    return CentrifugoError.PERMISSION_DENIED


def _expiry(expires_at: float | None) -> tuple[bool, int]:
    """``expires`` and ``ttl`` (whole seconds, at least 1) of a connect or refresh reply."""
    if expires_at is None:
        return False, 0
    return True, max(1, int(expires_at - time.time()))
