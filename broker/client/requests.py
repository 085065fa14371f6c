"""The Python client's requests other than subscribing: ``publish``, ``history``, ``presence``,
``ping``. ``Requests`` is a mixin of ``broker.client.session.Client``.

``publish`` publishes exactly once: every publish carries an ``idempotency_key`` (a random one
unless the caller gives one), which the broker remembers for its ``backplane.idempotency_window``
and answers a repeat of with the first publication's offset and epoch. So after ``unavailable``
(which means "maybe published"), a lost connection or a timeout, ``publish`` sends the same
publish again, with the same key, backing off, for up to ``publish_retry_for`` seconds.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio
import msgspec

from broker.backoff import Backoff
from broker.client.errors import (
    ClientError,
    ConnectionLost,
    RequestError,
    RequestTimeout,
)
from broker.client.messages import HistoryPage, Message
from protocol import (
    ClientInfo,
    ClientMessage,
    Codec,
    ErrorCode,
    History,
    HistoryResult,
    Ping,
    Presence,
    PresenceResult,
    Publication,
    Publish,
    Published,
    ServerMessage,
    StreamPosition,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from broker.client.link import Link

log = logging.getLogger("broker.client")


class Requests:
    """See the module docstring."""

    if TYPE_CHECKING:
        backoff: Backoff
        request_timeout: float
        publish_retry_for: float
        _codec: Codec

        def _check_open(self) -> None: ...
        async def _wait_link(self) -> Link: ...
        async def _send(self, link: Link, message: ClientMessage) -> None: ...
        async def _request(
            self,
            build: Callable[[int], ClientMessage],
            *,
            link: Link | None = None,
            on_reply: Callable[[ServerMessage], None] | None = None,
            within: float | None = None,
        ) -> ServerMessage: ...
        def _decode(self, publication: Publication) -> Message: ...

    @overload
    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        wait: Literal[True] = True,
        idempotency_key: str | None = None,
    ) -> Published: ...

    @overload
    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        wait: Literal[False],
        idempotency_key: str | None = None,
    ) -> None: ...

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        wait: bool = True,
        idempotency_key: str | None = None,
    ) -> Published | None:
        """Publish ``data`` (any value the encoding can carry) to ``channel``, once.

        Every publish carries ``idempotency_key`` (a random one unless given): the broker
        publishes a key once within its idempotency window and answers a repeat with the first
        publication's offset and epoch. With ``wait``, returns the ``published`` reply; after
        ``unavailable``, a lost connection or a timeout it sends the publish again with the same
        key (backing off) for up to ``publish_retry_for`` seconds, then raises the last error;
        other refusals raise ``RequestError`` at once. Without ``wait``, returns once the frame
        is sent: a refusal is only logged, and a publish sent just before the connection drops
        may be lost.
        """
        payload = self._codec.encode_payload(data)
        key = idempotency_key or secrets.token_urlsafe(16)
        if wait:
            return await self._publish_until_answered(channel, payload, key)
        self._check_open()
        try:
            with anyio.fail_after(self.request_timeout):
                link = await self._wait_link()
        except TimeoutError:
            raise RequestTimeout(f"no connection within {self.request_timeout} s") from None
        await self._send(link, Publish(channel=channel, data=payload, idempotency_key=key))
        return None

    async def _publish_until_answered(
        self, channel: str, payload: msgspec.Raw, key: str
    ) -> Published:
        deadline = anyio.current_time() + self.publish_retry_for
        attempt = 0
        while True:
            error: ClientError
            try:
                reply = await self._request(
                    lambda rid: Publish(id=rid, channel=channel, data=payload, idempotency_key=key)
                )
            except RequestError as exc:
                if exc.code != ErrorCode.UNAVAILABLE:
                    raise
                error = exc
            except (ConnectionLost, RequestTimeout) as exc:
                error = exc
            else:
                assert isinstance(reply, Published), reply
                return reply
            delay = self.backoff.delay(attempt)
            attempt += 1
            if anyio.current_time() + delay >= deadline:
                raise error
            log.info("publish.retry", extra={"channel": channel, "error": str(error)})
            await anyio.sleep(delay)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryPage:
        """The publications ``channel`` retains: after ``since`` (when its epoch is current),
        at most ``limit`` of them (the oldest after ``since``, else the latest)."""
        reply = await self._request(
            lambda rid: History(id=rid, channel=channel, since=since, limit=limit)
        )
        assert isinstance(reply, HistoryResult), reply
        return HistoryPage(
            channel=reply.channel,
            epoch=reply.epoch,
            offset=reply.offset,
            publications=[self._decode(p) for p in reply.publications],
        )

    async def presence(self, channel: str) -> list[ClientInfo]:
        """The clients subscribed to ``channel`` (where its namespace enables presence)."""
        reply = await self._request(lambda rid: Presence(id=rid, channel=channel))
        assert isinstance(reply, PresenceResult), reply
        return list(reply.clients)

    async def ping(self) -> float:
        """Round-trip time of a ``ping``, in seconds."""
        started = anyio.current_time()
        await self._request(lambda rid: Ping(id=rid))
        return anyio.current_time() - started
