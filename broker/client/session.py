"""The client session: one WebSocket connection at a time, reconnected for as long as it may be.

``Client`` is an async context manager. Entering it opens the first connection (and raises
``ConnectFailed`` if it cannot: a wrong URL fails fast); from then on a supervisor task owns the
connection. Per connection, a task group runs

* the reader: frames in, decoded (single messages or batches), replies matched to their request
  by ``id``, publications routed to their subscription by channel, ``subscribed`` and
  ``unsubscribed`` with ``id`` 0 (server-side subscriptions) to ``subscribing.py``. It never waits
  on a consumer (see ``subscription.py`` for why and for what a full queue does instead);
* the heartbeat: a ``ping`` every ``welcome.heartbeat / 2`` seconds, so the server never closes
  an idle client with 4009, and a ``pong`` overdue by ``heartbeat`` seconds means the server is
  gone: the connection is cut and replaced;
* with a token *provider* and a token that expires (``welcome.expires_at``): a ``refresh`` with a
  new token from the provider ahead of the expiry (a fifth of the remaining time, at most 30 s,
  before it). The provider is also called for every (re)connection.

When the connection ends, the close decides what comes next (docs/protocol.md §1): a ``disconnect``
with ``reconnect: false``, or a close code a retry cannot fix (1002, 1003, 1007, 1008, 1009, 1010,
4001), closes the client with ``Disconnected``; anything else (1001 drain, 1006 reset, 1011, 1013,
4008, 4009, ...) reconnects after ``max(retry_after, backoff)``, with capped exponential backoff
and full jitter (``backoff.py``). Each subscription is then sent again with ``since`` = the last
``{offset, epoch}`` it queued; ``recovered: true`` delivers the missed publications before the
live ones, ``recovered: false`` makes the subscription raise ``ResyncNeeded`` once.

Requests in flight when the connection drops fail with ``ConnectionLost`` (they may or may not
have been done, so they are not replayed). Requests made while disconnected wait for the next
connection, within their timeout. ``publish`` is the exception: every publish carries an
``idempotency_key`` (random, or the caller's), so the broker publishes it once however often it
is sent, and ``publish`` sends it again, with the same key, after ``unavailable``, a lost
connection or a timeout, for up to ``publish_retry_for`` seconds.

The transport is the ``websockets`` asyncio client, so the client runs on asyncio (anyio's
asyncio backend included), not on trio.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from types import TracebackType
from typing import Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from websockets.exceptions import ConnectionClosed

from broker.backoff import Backoff
from broker.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestError,
    RequestTimeout,
)
from broker.client.link import FINAL_CLOSE_CODES, OPEN_ERRORS, Link, Pending, Refused, open_link
from broker.client.requests import Requests
from broker.client.subscribing import ServerSubscriptions, Subscribing
from broker.client.subscription import AnySubscription
from protocol import (
    ClientMessage,
    Codec,
    Disconnect,
    Encoding,
    Error,
    Gap,
    HistoryResult,
    Join,
    Leave,
    Ping,
    Pong,
    PresenceResult,
    Publication,
    Published,
    Refresh,
    Refreshed,
    ServerMessage,
    Subscribed,
    Unsubscribed,
    Welcome,
)

log = logging.getLogger("broker.client")

DEFAULT_URL: Final = "ws://127.0.0.1:8000/v1/ws"

# The client's own codecs, not ``protocol.CODECS``: those count what the broker encodes, and a
# client running in the broker's process (as in the tests) must not add to the count.
_CODECS: Final = {encoding: Codec(encoding) for encoding in Encoding}

#: Gives a fresh connection token; called for every connection and before each expiry.
TokenProvider = Callable[[], Awaitable[str]]


def connect(
    url: str = DEFAULT_URL,
    *,
    encoding: Encoding = Encoding.JSON,
    token: str | TokenProvider | None = None,
    request_timeout: float = 10.0,
    open_timeout: float = 10.0,
    queue_size: int = 1000,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
    max_frame_bytes: int | None = 64 * 1024 * 1024,
    publish_retry_for: float = 30.0,
) -> Client:
    """A client for the broker at ``url`` (a ``/v1/ws`` endpoint); use it as
    ``async with connect(url) as client:``.

    ``encoding`` picks JSON or MessagePack; ``token`` is sent as ``Authorization: Bearer``: a
    string, or an async callable (a token provider) called for every connection and, before
    the token expires, for a ``refresh``.
    ``request_timeout`` bounds each request, waiting for a connection included. ``queue_size``
    is each subscription's default queue bound. ``backoff`` spaces reconnection attempts;
    ``max_attempts`` failed attempts in a row close the client with ``ConnectFailed`` (None: try
    for ever; 0: never reconnect). ``publish_retry_for`` bounds the seconds a ``publish`` is
    retried (with its idempotency key) after ``unavailable``, a lost connection or a timeout; keep
    it below the broker's ``backplane.idempotency_window``.
    """
    return Client(
        url,
        encoding=encoding,
        token=token,
        request_timeout=request_timeout,
        open_timeout=open_timeout,
        queue_size=queue_size,
        backoff=backoff or Backoff(),
        max_attempts=max_attempts,
        max_frame_bytes=max_frame_bytes,
        publish_retry_for=publish_retry_for,
    )


class Client(Subscribing, Requests):
    """A connection to the broker that survives disconnections. See the module docstring.
    ``subscribe``, ``unsubscribe`` and ``server_subscriptions`` are in
    ``broker.client.subscribing``; ``publish``, ``history``, ``presence`` and ``ping`` in
    ``broker.client.requests``."""

    def __init__(
        self,
        url: str,
        *,
        encoding: Encoding,
        token: str | TokenProvider | None,
        request_timeout: float,
        open_timeout: float,
        queue_size: int,
        backoff: Backoff,
        max_attempts: int | None,
        max_frame_bytes: int | None,
        publish_retry_for: float = 30.0,
    ) -> None:
        self.url = url
        self.publish_retry_for = publish_retry_for
        self.encoding = encoding
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.queue_size = queue_size
        self.backoff = backoff
        self.max_attempts = max_attempts
        self._max_frame_bytes = max_frame_bytes
        self._token = token
        self._codec = _CODECS[encoding]
        self._subs: dict[str, AnySubscription] = {}
        self._server_subscriptions = ServerSubscriptions()
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._link: Link | None = None
        self._links = 0
        self._failure: ClientClosed | None = None
        self._changed = anyio.Event()
        self._tasks: TaskGroup | None = None

    # --- state ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.ready

    @property
    def connections(self) -> int:
        """How many connections this client has opened so far (1 + reconnections)."""
        return self._links

    @property
    def welcome(self) -> Welcome | None:
        """The current connection's ``welcome`` (None while disconnected)."""
        return None if self._link is None else self._link.welcome

    @property
    def client_id(self) -> str | None:
        """The broker's id for the current connection; each connection gets a new one."""
        return None if self._link is None else self._link.welcome.client

    @property
    def subscriptions(self) -> dict[str, AnySubscription]:
        return dict(self._subs)

    async def wait_connected(self, *, after: int = 0) -> str:
        """Wait for a ready connection numbered above ``after``; its client id.

        ``await client.wait_connected(after=client.connections)`` waits for the next one.
        """
        while True:
            if self._failure is not None:
                raise self._failure
            link = self._link
            if link is not None and link.ready and link.number > after:
                return link.welcome.client
            await self._changed.wait()

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._tasks is not None or self._failure is not None:
            raise RuntimeError("a Client can be entered only once")
        link = await self._open_first()
        # Usable at once: there is nothing to resubscribe, and replies wait in the socket until
        # the reader (started just below) reads them.
        self._link, link.ready = link, True
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks = tasks
        tasks.start_soon(self._supervise, link)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._tasks is not None
        if exc is None or isinstance(exc, Exception):
            # The background tasks catch their own errors and were just cancelled: hand the
            # task group nothing, so the body's exception propagates as it is rather than
            # wrapped in an ExceptionGroup. Cancellation and the like go through it as usual.
            await self._tasks.__aexit__(None, None, None)
            return None
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the connection (1000) and end every subscription. Idempotent."""
        if self._failure is None:
            self._fail(ClientClosed("the client is closed"), clean=True)
        link = self._link
        if link is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await link.ws.close()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    def _fail(self, error: ClientClosed, *, clean: bool = False) -> None:
        """Close the client for good: everything waiting learns it now, and later calls too."""
        if self._failure is None:
            self._failure = error
            if not clean:
                log.warning("client.closed: %s", error)
        for sub in self._subs.values():
            if not sub.confirmed.is_set():
                sub.subscribe_error = error
                sub.confirmed.set()
            sub.close(None if clean else error)
        self._subs.clear()
        self._server_subscriptions.close()
        for pending in self._pending.values():
            pending.fail(error)
        self._pending.clear()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # --- connections ----------------------------------------------------------------------------

    async def _open_first(self) -> Link:
        try:
            return await self._open()
        except Refused as refused:
            notice = refused.notice
            raise ConnectFailed(
                f"{self.url} refused the connection: {notice.code} {notice.reason}"
                + (f" (retry after {notice.retry_after} s)" if notice.reconnect else "")
            ) from None
        except OPEN_ERRORS as exc:
            raise ConnectFailed(f"cannot connect to {self.url}: {exc}") from exc

    async def _open(self) -> Link:
        """A new connection that has read its ``welcome``."""
        link = await open_link(
            self.url,
            codec=self._codec,
            headers=await self._auth_headers(),
            open_timeout=self.open_timeout,
            max_frame_bytes=self._max_frame_bytes,
            number=self._links + 1,
        )
        self._links = link.number
        return link

    async def _supervise(self, link: Link | None) -> None:
        """Serve connections one after another until the client closes or gives up."""
        try:
            while link is not None:
                retry_after = await self._serve(link)
                if retry_after is None:
                    return
                link = await self._reconnect(retry_after)
        except Exception as exc:  # a bug: fail loudly rather than leave callers waiting
            log.exception("client.failed")
            self._fail(ClientClosed(f"the client failed: {exc!r}"))

    async def _serve(self, link: Link) -> float | None:
        """Run one connection until it ends; the ``retry_after`` to reconnect after, or None
        when the client must not reconnect."""
        self._link = link
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._heartbeat, link)
                if callable(self._token) and link.welcome.expires_at is not None:
                    tasks.start_soon(self._refresh, link, self._token, link.welcome.expires_at)
                tasks.start_soon(self._resubscribe, link)
                await self._read(link)
                tasks.cancel_scope.cancel()
        finally:
            self._link = None
            self._lose(link)
            self._notify()
        if self._failure is not None:
            return None
        notice = link.notice
        code = link.ws.close_code or 1006
        if notice is not None and not notice.reconnect:
            self._fail(Disconnected(notice.code, notice.reason))
            return None
        if notice is None and code in FINAL_CLOSE_CODES and not link.broken:
            self._fail(Disconnected(code, link.ws.close_reason or ""))
            return None
        log.info("client.connection_lost: code %s", code)
        return 0.0 if notice is None else notice.retry_after

    async def _reconnect(self, retry_after: float) -> Link | None:
        """A new connection, after honouring ``retry_after`` and the backoff; None on giving up."""
        attempt = 0
        last: BaseException | None = None
        while self.max_attempts is None or attempt < self.max_attempts:
            delay = max(retry_after, self.backoff.delay(attempt))
            attempt += 1
            log.info("client.reconnecting: attempt %d in %.3f s", attempt, delay)
            await anyio.sleep(delay)
            try:
                return await self._open()
            except Refused as refused:
                notice = refused.notice
                if not notice.reconnect:
                    self._fail(Disconnected(notice.code, notice.reason))
                    return None
                retry_after, last = notice.retry_after, refused
            except OPEN_ERRORS as exc:
                retry_after, last = 0.0, exc
        failure = ConnectFailed(
            f"cannot reconnect to {self.url} after {attempt} attempts"
            + (f": {last}" if last is not None else "")
        )
        failure.__cause__ = last
        self._fail(failure)
        return None

    async def _resubscribe(self, link: Link) -> None:
        """Send every subscription on a new connection, then let user requests through."""
        for channel in link.welcome.subs:
            sub = self._subs.get(channel)
            if sub is not None:
                # The server subscribes it itself (``subscribed`` id 0): not to be sent.
                sub.sent_on = link.number
        try:
            while unsent := [s for s in self._subs.values() if s.sent_on != link.number]:
                for sub in unsent:
                    await self._send_subscribe(sub, link)
        except ConnectionLost:
            return
        # No await between the last check and this: a subscription added from now on is sent
        # by ``subscribe`` itself.
        link.ready = True
        self._notify()

    async def _heartbeat(self, link: Link) -> None:
        heartbeat = link.welcome.heartbeat
        while True:
            await anyio.sleep(heartbeat / 2)
            try:
                await self._request(lambda rid: Ping(id=rid), link=link, within=heartbeat)
            except RequestTimeout:
                log.warning("client.heartbeat_timeout: no pong within %s s", heartbeat)
                self._abort(link)
                return
            except ClientError:
                return

    async def _auth_headers(self) -> dict[str, str]:
        token = self._token
        if callable(token):
            token = await token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _refresh(self, link: Link, provider: TokenProvider, expires_at: float) -> None:
        """Send ``refresh`` with a new token ahead of each expiry of ``link``'s token."""
        while True:
            remaining = expires_at - time.time()
            await anyio.sleep(max(0.0, remaining - min(30.0, remaining / 5)))
            try:
                token = await provider()
                reply = await self._request(partial(_refresh_request, token), link=link)
            except ClientError as exc:
                # The server closes a connection whose refresh it refuses; the supervisor
                # reconnects with a new token when the close allows it.
                log.warning("client.refresh_failed: %s", exc)
                return
            if not isinstance(reply, Refreshed) or reply.expires_at is None:
                return
            expires_at = reply.expires_at

    def _abort(self, link: Link) -> None:
        """Cut ``link`` at once; its reader ends and the supervisor reconnects."""
        link.abort()

    def _lose(self, link: Link) -> None:
        """``link`` is gone: fail the requests waiting for its replies."""
        for request_id, pending in list(self._pending.items()):
            if pending.link is link:
                del self._pending[request_id]
                pending.fail(ConnectionLost("the connection was lost before the reply came"))

    # --- the reader -----------------------------------------------------------------------------

    async def _read(self, link: Link) -> None:
        for message in link.backlog:
            self._dispatch(link, message)
        decode = self._codec.decode_server
        try:
            while True:
                frame = await link.ws.recv(decode=False)
                for message in decode(frame):
                    self._dispatch(link, message)
        except ConnectionClosed:
            return
        except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError, ValueError) as exc:
            # Skipping the frame could skip a publication: start over on a new connection,
            # whose recovery fetches whatever this one lost.
            log.warning("client.bad_frame: %s", exc)
            link.broken = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await link.ws.close(1002, "undecodable frame")

    def _dispatch(self, link: Link, message: ServerMessage) -> None:
        match message:
            case Publication(channel=channel):
                sub = self._subs.get(channel)
                if sub is not None and sub.accept(message):
                    self._start_catch_up(sub)
            case Join(channel=channel) | Leave(channel=channel):
                sub = self._subs.get(channel)
                if sub is not None:
                    sub.presence_change(message)
            case Gap(channel=channel):
                sub = self._subs.get(channel)
                if sub is not None and sub.gap(message):
                    self._start_catch_up(sub)
            case Disconnect():
                link.notice = message
            case Error(id=None, code=code, message=text):
                # A request sent without id: a fire-and-forget publish.
                log.warning("client.error_without_id: %s: %s", code, text)
            case Subscribed(id=0):
                self._server_subscribed(link, message)
            case Unsubscribed(id=0):
                self._server_unsubscribed(message)
            case (
                Subscribed()
                | Unsubscribed()
                | Published()
                | HistoryResult()
                | PresenceResult()
                | Pong()
                | Error()
            ):
                pending = None if message.id is None else self._pending.pop(message.id, None)
                if pending is not None:
                    pending.resolve(message)
            case Welcome():
                pass

    # --- requests -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._tasks is None:
            raise RuntimeError("use the client as `async with connect(url) as client:`")

    async def _wait_link(self) -> Link:
        while True:
            if self._failure is not None:
                raise self._failure
            link = self._link
            if link is not None and link.ready:
                return link
            await self._changed.wait()

    async def _send(self, link: Link, message: ClientMessage) -> None:
        try:
            await link.ws.send(self._codec.encode_client(message), text=self._codec.text)
        except ConnectionClosed as exc:
            raise ConnectionLost("the connection was lost") from exc

    async def _request(
        self,
        build: Callable[[int], ClientMessage],
        *,
        link: Link | None = None,
        on_reply: Callable[[ServerMessage], None] | None = None,
        within: float | None = None,
    ) -> ServerMessage:
        """Send ``build(id)`` and return its reply; ``error`` replies raise ``RequestError``.

        Without ``link``, waits for the current connection to be ready (within the timeout).
        """
        self._check_open()
        timeout = self.request_timeout if within is None else within
        request_id = next(self._ids)
        pending: Pending | None = None
        try:
            with anyio.fail_after(timeout):
                if link is None:
                    link = await self._wait_link()
                elif link is not self._link:
                    raise ConnectionLost("the connection was lost")
                pending = self._pending[request_id] = Pending(link, on_reply)
                await self._send(link, build(request_id))
                await pending.done.wait()
        except TimeoutError:
            raise RequestTimeout(f"no reply within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)
        assert pending is not None
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if isinstance(reply, Error):
            raise RequestError(reply.code, reply.message)
        assert reply is not None
        return reply


def _refresh_request(token: str, request_id: int) -> Refresh:
    return Refresh(id=request_id, token=token)
