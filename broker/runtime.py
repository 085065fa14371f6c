"""``Broker``: one process's broker, the object every route reaches through ``Depends``.

It owns the hub, knows every live connection (for ``max_connections``, the HTTP API's
``disconnect`` and metrics) and admits or refuses new ones. ``serve`` runs the hub and the
backplane; nothing is accepted before both take commands, and if either stops later the broker
has failed (``Broker.fail``): it says so in the log and on ``/healthz`` instead of living on
half-alive.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus
from starlette.types import Scope

from broker.auth import Auth
from broker.auth.origin import origin_allowed
from broker.auth.startup import log_posture
from broker.backplane import Backplane, Head, create_backplane
from broker.connection import Connection, ConnectionStatistics
from broker.control import BrokerControl
from broker.flusher import FlushScheduler
from broker.hub import Hub
from broker.logs import configure_logging, get_logger
from broker.monitor.loopwatch import LoopWatch
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
    #: Slow consumers by cause (``outbox_full``, ``write_timeout``, ``replies_held``).
    slow_consumer_causes: dict[str, int] = field(default_factory=dict)


class Broker:
    #: Called with the broker when one fails (``fail``), in the event loop's thread.
    failure_hooks: ClassVar[list[Callable[[Broker], None]]] = []

    def __init__(
        self, settings: Settings, backplane: Backplane | None = None, *, auth: Auth | None = None
    ) -> None:
        self.settings = settings
        #: Authentication, permissions and API keys (broker/auth).
        self.auth = auth or Auth(settings)
        self.backplane = backplane or create_backplane(settings)
        self.hub = Hub(settings, self.backplane)
        #: This process's name in control answers.
        self.process_id = secrets.token_urlsafe(9)
        #: The cross-process control path: requests about the whole broker.
        self.control = BrokerControl(self)
        #: Flushes the outboxes fed during a turn of the event loop: right after it, or (for
        #: publications under a sustained stream) once per ``queue.flush_interval``.
        self.flusher = FlushScheduler(settings.queue.flush_interval)
        self.connections: dict[str, Connection] = {}
        self.totals = Totals()
        self.close_codes: dict[int, int] = {}
        #: Why the broker stopped working (``fail``); None while it works.
        self.failure: str | None = None
        #: Called once at start-up, after ``security.posture``: the app's parts log how they are
        #: exposed (the web console, broker/console).
        self.startup_logs: list[Callable[[], None]] = []
        self._started = False
        monitor = settings.monitor
        #: The blocked-loop watch: event-loop lag histogram and ``loop.blocked`` warnings.
        self.loopwatch = LoopWatch(
            interval=monitor.loop_check_interval,
            warning=monitor.loop_lag_warning,
            describe=self.describe,
        )

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the hub and the backplane until cancelled; ``task_status.started()`` once both
        take requests.

        Both must run as long as the broker does. Once started, if either ends (an exception, or
        a return nobody asked for), the broker has failed: see ``fail``. A failure while
        starting is raised, so that start-up fails.
        """
        self._log_opened_up()
        async with anyio.create_task_group() as tasks:
            await tasks.start(self._essential, "hub", self.hub.run)
            await tasks.start(self._essential, "control", self.control.run)
            await tasks.start(
                self._essential,
                "backplane",
                # Live publications made here go to the hub without a wait when it has room.
                functools.partial(self.backplane.run, deliver_now=self.hub.offer_live),
                self.control.deliver,
            )
            await tasks.start(self.loopwatch.run)
            self._started = True
            task_status.started()

    async def _essential(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *args: Any,
        task_status: TaskStatus[None],
    ) -> None:
        try:
            await run(*args, task_status=task_status)
        except Exception as exc:
            if not self._started:
                raise
            self.fail(name, exc)
        else:
            if self._started:
                self.fail(name, None)

    def fail(self, task: str, error: BaseException | None) -> None:
        """The broker cannot go on: ``task`` ended. Log it once at error level, turn ``/healthz``
        and ``/readyz`` to 503, and call every hook in ``Broker.failure_hooks`` (the broker's own
        server installs one that stops the process, so that its supervisor starts a new one).
        Mounted in a host app, ending the process is the host's decision: its health check
        sees the 503."""
        if self.failure is not None:
            return
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]  # the task groups it went through say nothing
        self.failure = (
            f"{task} stopped: {type(error).__name__}: {error}"
            if error
            else (f"{task} stopped unexpectedly")
        )
        log.error("broker.failed", task=task, reason=self.failure, exc_info=error)
        for hook in Broker.failure_hooks:
            hook(self)

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
        return self.failure is None and self.hub.running and self.backplane.ready

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        """Publish into ``channel``: its offset and epoch once the backplane has it (for a
        repeated ``idempotency_key``, the first publication's, without publishing again). Raises
        ``BackplaneUnavailable``."""
        options = self.settings.namespace(namespace_of(channel))
        return await self.backplane.publish(
            channel, data, codec, publisher, options, converted, idempotency_key
        )

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Callable[[], None] | None = None,
        idempotency_key: str | None = None,
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
            channel, data, codec, publisher, options, converted, on_settled, idempotency_key
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Broker]:
        """Run the broker for the duration of the block (for a host app's lifespan).

        When nothing has configured structlog yet (a host app run by plain ``uvicorn``), the
        broker's ``[log]`` settings are applied first, so that its lines are JSON when stdout
        is not a terminal, as under ``broker serve``.
        """
        if not structlog.is_configured():
            configure_logging(self.settings.log)
        log_posture(self.settings, host_authentication=self.auth.authenticate is not None)
        for startup_log in self.startup_logs:
            startup_log()
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

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake from ``origin`` to ``host`` may go on (broker/auth/origin.py)."""
        return origin_allowed(origin, host, self.settings.server.allowed_origins)

    def connections_of(self, user: str) -> list[Connection]:
        """This process's connections of ``user``."""
        return [c for c in self.connections.values() if c.subscriber.user == user]

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
        cause = connection.slow_consumer
        if cause is not None:
            totals.slow_consumers += 1
            causes = totals.slow_consumer_causes
            causes[cause] = causes.get(cause, 0) + 1
        # No close code known: the connection ended without a close frame (RFC 6455: 1006).
        code = connection.close_code or 1006
        self.close_codes[code] = self.close_codes.get(code, 0) + 1

    def drops(self) -> dict[str, int]:
        """Clients dropped and requests refused so far, by reason (``broker_drops_total``);
        every reason is present."""
        causes = self.totals.slow_consumer_causes
        return {
            "outbox_overflow": causes.get("outbox_full", 0) + causes.get("replies_held", 0),
            "write_timeout": causes.get("write_timeout", 0),
            "rate_limit": self.hub.instruments.rate_limited,
            "connection_limit": self.totals.connections_refused,
            "heartbeat": self.close_codes.get(4009, 0),
            "protocol_error": self.live_statistics().protocol_errors,
            "auth_failure": self.close_codes.get(4001, 0),
        }

    def describe(self) -> dict[str, int]:
        """What the broker is doing now, in a few figures (the ``loop.blocked`` warning)."""
        hub = self.hub.statistics()
        return {
            "connections": len(self.connections),
            "hub_mailbox_queued": hub.mailbox_queued,
            "channels": hub.channels,
            "subscriptions": hub.subscriptions,
            "publications": hub.publications,
        }

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
