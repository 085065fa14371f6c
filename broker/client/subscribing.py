"""Subscribing, for ``broker.client.session.Client`` (a mixin): the client's own subscriptions,
the server-side ones, and catching up after a gap or a full queue.

**The client's own** (``subscribe``): a ``Subscription`` is made at once and sent on the current
connection, or on the next one; ``subscribe`` returns once the server confirmed it. A new
connection sends every subscription again with ``since`` = its last position (the session's
``_resubscribe``).

**Server-side subscriptions** are the ones the server makes for the connection without a request
of the client's, announced by ``subscribed`` with ``id`` 0 (docs/protocol.md, "Subscribed and
unsubscribed by the server"): the channels of the token's ``subs`` claim, and those an operator
subscribes the user to (the HTTP API). Each becomes a ``Subscription`` like the client's own
(``server_side`` true), in ``Client.subscriptions``, and is handed to the user once through
``Client.server_subscriptions()``. On a new connection the server makes the token's ones again
by itself (``welcome.subs`` lists them): the client does not send those, and applies their
``subscribed`` with ``id`` 0, from the channel's current position, as a gap from the
subscription's position (fetched with ``history``). The others (an operator's) it sends again
like its own, with ``since``: recovered where the channel's permissions let the client
subscribe, else ended with the refusal (``RequestError`` from the iterator). ``unsubscribed``
with ``id`` 0 (the operator's unsubscribe) ends the subscription: its iteration ends after what
was queued.

**Catching up** (``_catch_up``): what a lagging subscription dropped is fetched with ``history``
as its consumer makes room (see ``subscription.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final, Literal, overload

import anyio

from broker.client.errors import (
    ClientClosed,
    ConnectionLost,
    RequestError,
    RequestTimeout,
)
from broker.client.link import Link, Pending
from broker.client.messages import Message, PresenceChange
from broker.client.subscription import AnySubscription, Subscription
from protocol import (
    ClientMessage,
    Codec,
    Error,
    ErrorCode,
    History,
    HistoryResult,
    Publication,
    ServerMessage,
    StreamPosition,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

if TYPE_CHECKING:
    import itertools

    from anyio.abc import TaskGroup

    from broker.backoff import Backoff

#: Most publications asked for per catch-up ``history`` request. The broker queues a reply whole,
#: and one larger than its outbox's byte bound (``queue.max_bytes``, 1 MiB by default) gets the
#: connection dropped as a slow consumer: small pages keep each reply well below it.
CATCH_UP_BATCH: Final = 100


class ServerSubscriptions:
    """An async iterator over the server-side subscriptions the server makes for the client,
    each once, in the order they were made (the token's ``subs``, an operator's subscribe).

    Ends when the client closes. Subscriptions made before iteration started are kept for it."""

    def __init__(self) -> None:
        self._items: deque[AnySubscription] = deque()
        self._changed: anyio.Event | None = None
        self._closed = False

    def add(self, sub: AnySubscription) -> None:
        self._items.append(sub)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def __aiter__(self) -> ServerSubscriptions:
        return self

    async def __anext__(self) -> AnySubscription:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._items.popleft()


class Subscribing:
    """See the module docstring."""

    if TYPE_CHECKING:
        backoff: Backoff
        request_timeout: float
        queue_size: int
        _codec: Codec
        _subs: dict[str, AnySubscription]
        _pending: dict[int, Pending]
        _ids: itertools.count[int]
        _link: Link | None
        _failure: ClientClosed | None
        _tasks: TaskGroup | None
        _server_subscriptions: ServerSubscriptions

        def _check_open(self) -> None: ...
        async def _send(self, link: Link, message: ClientMessage) -> None: ...
        async def _request(
            self,
            build: Callable[[int], ClientMessage],
            *,
            link: Link | None = None,
            on_reply: Callable[[ServerMessage], None] | None = None,
            within: float | None = None,
        ) -> ServerMessage: ...
        def _abort(self, link: Link) -> None: ...

    # --- the client's own subscriptions ---------------------------------------------------------

    @overload
    async def subscribe(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        queue_size: int | None = None,
        joins_and_leaves: Literal[False] = False,
    ) -> Subscription[Message]: ...

    @overload
    async def subscribe(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        queue_size: int | None = None,
        joins_and_leaves: Literal[True],
    ) -> Subscription[Message | PresenceChange]: ...

    async def subscribe(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        queue_size: int | None = None,
        joins_and_leaves: bool = False,
    ) -> AnySubscription:
        """Subscribe to ``channel``; once this returns, every later publication is delivered.

        With ``since``, what came after that position is delivered first, or the iterator raises
        ``ResyncNeeded`` first when it cannot be. ``joins_and_leaves`` also yields
        ``PresenceChange`` items. Raises ``RequestError`` (e.g. ``already_subscribed``,
        ``limit_exceeded``), ``RequestTimeout`` or the client's ``ClientClosed``.
        """
        self._check_open()
        if channel in self._subs:
            raise RequestError(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel!r}")
        sub: AnySubscription = Subscription(
            self,
            channel,
            since=since,
            queue_size=self.queue_size if queue_size is None else queue_size,
            joins_and_leaves=joins_and_leaves,
            decode=self._decode,
        )
        self._subs[channel] = sub
        try:
            with anyio.fail_after(self.request_timeout):
                link = self._link
                if link is not None and link.ready:
                    try:
                        await self._send_subscribe(sub, link)
                    except ConnectionLost:
                        pass  # the next connection sends it again (``_resubscribe``)
                # Otherwise the next connection sends it.
                await sub.confirmed.wait()
        except BaseException as exc:
            if not sub.confirmed.is_set():
                with anyio.CancelScope(shield=True):
                    await self._abandon(sub)
            if isinstance(exc, TimeoutError):
                raise RequestTimeout(
                    f"no reply to subscribe within {self.request_timeout} s"
                ) from None
            raise
        if sub.subscribe_error is not None:
            raise sub.subscribe_error
        return sub

    async def _send_subscribe(self, sub: AnySubscription, link: Link) -> None:
        if sub.sent_on == link.number:
            return
        sub.sent_on = link.number
        since = sub.position
        request_id = next(self._ids)
        self._pending[request_id] = Pending(link, partial(self._on_subscribed, sub, since))
        await self._send(link, Subscribe(id=request_id, channel=sub.channel, since=since))

    def _on_subscribed(
        self, sub: AnySubscription, since: StreamPosition | None, reply: ServerMessage
    ) -> None:
        if self._subs.get(sub.channel) is not sub:
            return
        if isinstance(reply, Error):
            if sub.server_side and reply.code == ErrorCode.ALREADY_SUBSCRIBED:
                return  # the server made it again itself: its ``subscribed`` id 0 applies
            del self._subs[sub.channel]
            error = RequestError(reply.code, reply.message)
            if sub.confirmed.is_set():
                sub.close(error)  # a resubscription was refused: say so where the user looks
            else:
                sub.subscribe_error = error
                sub.close()
                sub.confirmed.set()
            return
        if isinstance(reply, Subscribed):
            if sub.subscribed(reply, since):
                self._start_catch_up(sub)
            sub.confirmed.set()

    # --- server-side subscriptions --------------------------------------------------------------

    def server_subscriptions(self) -> ServerSubscriptions:
        """The subscriptions the server makes for this client (the token's ``subs``, an
        operator's subscribe), each once, as they are made::

            async for subscription in client.server_subscriptions():
                ...  # a Subscription, as subscribe() returns, with server_side true

        They are in ``subscriptions`` too. Iteration ends when the client closes."""
        return self._server_subscriptions

    def _server_subscribed(self, link: Link, reply: Subscribed) -> None:
        """``subscribed`` with ``id`` 0: the server subscribed this connection itself."""
        sub = self._subs.get(reply.channel)
        new = sub is None
        if sub is None:
            sub = Subscription(
                self,
                reply.channel,
                since=None,
                queue_size=self.queue_size,
                joins_and_leaves=False,
                decode=self._decode,
                server_side=True,
            )
            self._subs[reply.channel] = sub
            sub.confirmed.set()
        elif not sub.confirmed.is_set():
            # ``subscribe`` raced the server's own: the server's holds it, and ours will be
            # refused as ``already_subscribed``.
            sub.server_side = True
            sub.confirmed.set()
        # The server holds it on this connection: not to be sent again on it.
        sub.sent_on = link.number
        if sub.server_subscribed(reply):
            self._start_catch_up(sub)
        if new:
            self._server_subscriptions.add(sub)

    def _server_unsubscribed(self, reply: Unsubscribed) -> None:
        """``unsubscribed`` with ``id`` 0: an operator ended the subscription."""
        sub = self._subs.pop(reply.channel, None)
        if sub is not None:
            sub.close()

    async def _abandon(self, sub: AnySubscription) -> None:
        """``subscribe`` gave up on ``sub``: forget it here and, if it reached the server, there."""
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        sub.close()
        link = self._link
        if link is not None and sub.sent_on == link.number:
            request_id = next(self._ids)
            self._pending[request_id] = Pending(link)  # its reply is read and dropped
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await self._send(link, Unsubscribe(id=request_id, channel=sub.channel))
                except ConnectionLost:
                    pass

    async def unsubscribe(self, channel: str) -> None:
        """Stop the subscription to ``channel`` (see ``Subscription.unsubscribe``)."""
        sub = self._subs.get(channel)
        if sub is None:
            raise RequestError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel!r}")
        await self._unsubscribe(sub)

    async def _unsubscribe(self, sub: AnySubscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            sub.close()
            return
        del self._subs[sub.channel]
        sub.close()
        link = self._link
        if link is None or sub.sent_on != link.number or self._failure is not None:
            return  # the server has already forgotten it, or never knew it
        try:
            await self._request(lambda rid: Unsubscribe(id=rid, channel=sub.channel), link=link)
        except (RequestError, ConnectionLost, RequestTimeout):
            pass  # not subscribed any more, or the connection (and the subscription) is gone

    def _decode(self, publication: Publication) -> Message:
        return Message(
            channel=publication.channel,
            offset=publication.offset,
            epoch=publication.epoch,
            data=self._codec.decode_payload(publication.data),
            publisher=publication.from_,
        )

    # --- catching up after a gap or a full queue ------------------------------------------------

    def _start_catch_up(self, sub: AnySubscription) -> None:
        if sub.catching_up or self._tasks is None or self._failure is not None:
            return
        sub.catching_up = True
        self._tasks.start_soon(self._catch_up, sub)

    async def _catch_up(self, sub: AnySubscription) -> None:
        """Fetch what ``sub`` dropped with ``history``, as its consumer makes room."""
        unavailable = 0
        try:
            while sub.lagging and self._subs.get(sub.channel) is sub:
                room = min(await sub.wait_room(), CATCH_UP_BATCH)
                since = sub.position
                if not sub.lagging or sub.closed or since is None:
                    break
                try:
                    await self._request(
                        _history_request(sub.channel, since, room),
                        on_reply=partial(self._on_caught_up, sub, since),
                    )
                    unavailable = 0
                except RequestError as exc:
                    # Any other error was applied by _on_caught_up (a resync).
                    if exc.code == ErrorCode.UNAVAILABLE:
                        await anyio.sleep(self.backoff.delay(unavailable))
                        unavailable += 1
                except ConnectionLost:
                    pass  # the resubscription on the next connection recovers
                except RequestTimeout:
                    link = self._link
                    if link is not None:
                        self._abort(link)  # the resubscription will recover instead
                except ClientClosed:
                    return
        finally:
            sub.catching_up = False

    def _on_caught_up(
        self, sub: AnySubscription, since: StreamPosition, reply: ServerMessage
    ) -> None:
        # Stale when a resubscription moved the position meanwhile.
        if self._subs.get(sub.channel) is not sub or not sub.lagging or sub.position != since:
            return
        if isinstance(reply, Error):
            if reply.code != ErrorCode.UNAVAILABLE:  # that one passes: ask again later
                sub.history_unavailable()
        elif isinstance(reply, HistoryResult):
            sub.caught_up(reply)


def _history_request(channel: str, since: StreamPosition, limit: int) -> Callable[[int], History]:
    def build(request_id: int) -> History:
        return History(id=request_id, channel=channel, since=since, limit=limit)

    return build
