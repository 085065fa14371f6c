"""``Broker``: one process's broker, the object every route reaches through ``Depends``.

It owns the hub, knows every live connection (for ``max_connections``, the HTTP API's
``disconnect`` and metrics) and admits or refuses new ones. ``serve`` runs the hub; nothing is
accepted before the hub takes commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import msgspec
from anyio.abc import TaskStatus
from starlette.types import Scope

from broker.backplane import Backplane, Head, create_backplane
from broker.connection import Connection, ConnectionStatistics
from broker.hub import Hub
from broker.logs import get_logger
from broker.outbox import FlushScheduler
from broker.settings import Settings
from broker.transport import TRANSPORT_EXTENSION, TransportLink
from protocol import Codec, Encoding, namespace_of

log = get_logger("broker.runtime")


@dataclass(slots=True)
class Totals:
    """Counters of connections that have closed, so totals survive them."""

    connections_opened: int = 0
    connections_refused: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    protocol_errors: int = 0
    slow_consumers: int = 0


class Broker:
    def __init__(self, settings: Settings, backplane: Backplane | None = None) -> None:
        self.settings = settings
        self.backplane = backplane or create_backplane(settings)
        self.hub = Hub(settings, self.backplane)
        #: Flushes the outboxes fed during a turn of the event loop: right after it, or (for
        #: publications under a sustained stream) once per ``queue.flush_interval``.
        self.flusher = FlushScheduler(settings.queue.flush_interval)
        self.connections: dict[str, Connection] = {}
        self.totals = Totals()
        self.close_codes: dict[int, int] = {}

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the hub and the backplane until cancelled; ``task_status.started()`` once both
        take requests."""
        self._log_opened_up()
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.hub.run)
            await tasks.start(self.backplane.run, self.hub.submit)
            task_status.started()

    def _log_opened_up(self) -> None:
        """Say at start-up what the settings open up beyond the secure defaults."""
        server = self.settings.server
        if self.settings.websocket.conformance_echo:
            log.warning("broker.conformance_echo_on", path="/conformance/echo")
        if server.trusted_proxies:
            log.info("broker.trusted_proxies", proxies=server.trusted_proxies)

    @property
    def ready(self) -> bool:
        """Ready to take traffic: the hub runs and the backplane is connected (``/readyz``)."""
        return self.hub.running and self.backplane.ready

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        converted: dict[Encoding, msgspec.Raw] | None = None,
    ) -> Head:
        """Publish into ``channel``: its offset and epoch once the backplane has it. Raises
        ``BackplaneUnavailable``."""
        options = self.settings.namespace(namespace_of(channel))
        return await self.backplane.publish(channel, data, codec, publisher, options, converted)

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> Head | asyncio.Future[Head]:
        """``publish`` for a publisher that goes on before the result: the head when the
        backplane has it at once (in memory), otherwise a future that ends with it or with
        ``BackplaneUnavailable`` (Redis: a pipelined script run). Waits only while the
        backplane's publish queue is full (``backplane.publish_queue``), so that a publisher
        never holds more than that in memory. Successive calls are published in their order.
        ``on_settled`` is called right after a returned future ends, in the task that ends it,
        and must not raise. Raises ``BackplaneUnavailable`` when refused at once (a Redis shard
        not ready)."""
        options = self.settings.namespace(namespace_of(channel))
        return await self.backplane.publish_submit(
            channel, data, codec, publisher, options, converted, on_settled
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Broker]:
        """Run the broker for the duration of the block (for a host app's lifespan)."""
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.serve)
            try:
                yield self
            finally:
                self.flusher.close()
                tasks.cancel_scope.cancel()

    def at_capacity(self) -> bool:
        limit = self.settings.limits.max_connections
        return limit > 0 and len(self.connections) >= limit

    def admission_refusal(self, scope: Scope) -> str | None:
        """Why a WebSocket client must be told to come back later (1013), or None: the sockets
        open (counted from accept) past ``limits.max_connections``, or those of its address
        past ``limits.max_connections_per_ip``."""
        link = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        client = scope.get("client")
        address: str | None = None if client is None else client[0]
        if isinstance(link, TransportLink):
            return link.admission_refusal(address)
        # Under another server: the WebSocket connections are all that is known.
        if self.at_capacity():
            return "max_connections"
        per_ip = self.settings.limits.max_connections_per_ip
        if per_ip and address is not None:
            same = sum(1 for c in self.connections.values() if c.address == address)
            if same >= per_ip:
                return "max_connections_per_ip"
        return None

    def refused(self, reason: str = "max_connections") -> None:
        self.totals.connections_refused += 1
        log.warning(
            "connection.refused",
            reason=reason,
            connections=len(self.connections),
            refused_total=self.totals.connections_refused,
        )

    def origin_allowed(self, origin: str | None) -> bool:
        allowed = self.settings.server.allowed_origins
        # Non-browser clients send no Origin; browsers always do (RFC 6455 §4.1, §10.2).
        return not allowed or origin is None or origin in allowed

    def add(self, connection: Connection) -> None:
        self.connections[connection.id] = connection
        self.totals.connections_opened += 1

    def remove(self, connection: Connection) -> None:
        self.connections.pop(connection.id, None)
        totals, stats = self.totals, connection.stats
        totals.messages_in += stats.messages_in
        totals.bytes_in += stats.bytes_in
        totals.messages_out += stats.messages_out
        totals.bytes_out += stats.bytes_out
        totals.protocol_errors += stats.protocol_errors
        if connection.slow_consumer is not None:
            totals.slow_consumers += 1
        code = connection.close_code or 1005
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def live_statistics(self) -> ConnectionStatistics:
        """Totals of closed connections plus those of the live ones."""
        totals = self.totals
        live = ConnectionStatistics(
            totals.messages_in,
            totals.bytes_in,
            totals.messages_out,
            totals.bytes_out,
            totals.protocol_errors,
        )
        for connection in self.connections.values():
            stats = connection.stats
            live.messages_in += stats.messages_in
            live.bytes_in += stats.bytes_in
            live.messages_out += stats.messages_out
            live.bytes_out += stats.bytes_out
            live.protocol_errors += stats.protocol_errors
        return live
