"""History and presence requests: read from the backplane in a task (part of the hub).

``Reads`` is a mixin of ``broker.hub.Hub``. A ``history`` or ``presence`` request is checked
against its namespace inside the hub command, then read in a task of the hub's task group, which
answers the subscriber (``unavailable`` when the backplane cannot be read).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from broker.backplane.base import Backplane, BackplaneUnavailable
from broker.settings import NamespaceSettings
from broker.subscriber import Subscriber
from protocol import (
    ErrorCode,
    History,
    HistoryResult,
    Message,
    Presence,
    PresenceResult,
    namespace_of,
)


class Reads:
    """The hub's history and presence reads. See the module docstring."""

    if TYPE_CHECKING:
        backplane: Backplane

        def _spawn(self, task: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None: ...
        def _reply(self, subscriber: Subscriber, message: Message) -> None: ...
        def _error(
            self, subscriber: Subscriber, request_id: int | None, code: ErrorCode, text: str
        ) -> None: ...
        def _options(self, channel: str) -> NamespaceSettings: ...

    def _history(self, subscriber: Subscriber, request: History) -> None:
        options = self._options(request.channel)
        if options.history_size == 0:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"history is not enabled in namespace {namespace_of(request.channel)!r}",
            )
            return
        self._spawn(self._read_history, subscriber, request, options)

    async def _read_history(
        self, subscriber: Subscriber, request: History, options: NamespaceSettings
    ) -> None:
        since = request.since
        channel, limit = request.channel, request.limit
        try:
            # With a position in the current stream: what came after it, oldest first.
            # Otherwise (none, or one from a lost stream): the latest ``limit``.
            page = None
            if since is not None:
                page = await self.backplane.read(channel, since.offset, limit, options)
                if page.head.epoch != since.epoch:
                    page = None
            if page is None:
                page = await self.backplane.latest(channel, limit, options)
        except BackplaneUnavailable:
            self._error(subscriber, request.id, ErrorCode.UNAVAILABLE, "history is unavailable")
            return
        assert subscriber.encoding is not None
        encoding = subscriber.encoding
        try:
            publications = [p.message(encoding) for p in page.publications]
        except (ValueError, TypeError, OverflowError):
            self._error(
                subscriber,
                request.id,
                ErrorCode.INTERNAL,
                "a retained publication cannot be sent in this connection's encoding",
            )
            return
        self._reply(
            subscriber,
            HistoryResult(
                id=request.id,
                channel=request.channel,
                epoch=page.head.epoch,
                offset=page.head.offset,
                publications=publications,
            ),
        )

    def _presence(self, subscriber: Subscriber, request: Presence) -> None:
        if not self._options(request.channel).presence:
            self._error(
                subscriber,
                request.id,
                ErrorCode.BAD_REQUEST,
                f"presence is not enabled in namespace {namespace_of(request.channel)!r}",
            )
            return
        self._spawn(self._read_presence, subscriber, request)

    async def _read_presence(self, subscriber: Subscriber, request: Presence) -> None:
        try:
            members = await self.backplane.presence(request.channel)
        except BackplaneUnavailable:
            self._error(subscriber, request.id, ErrorCode.UNAVAILABLE, "presence is unavailable")
            return
        self._reply(
            subscriber, PresenceResult(id=request.id, channel=request.channel, clients=members)
        )
