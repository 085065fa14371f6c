"""What one WebSocket connection holds, and the small values it hands around.

``ConnectionState`` declares the state every part of a connection works on (its slots and their
types): the reader (``broker.connection_reader``), the encoding of frames for the socket
(``broker.connection_encoding``), closing (``broker.connection_closing``) and the writer without
a task (``broker.link_writer``) are mixins over it, and ``broker.connection.Connection`` puts
them together and fills the state in. Slots: one of these lives as long as each connection
(memory per connection: docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from starlette.websockets import WebSocket

from broker import client_ids
from broker.hub import Hub, Subscriber
from broker.monitor.histogram import Histogram
from broker.outbox import Outbox
from broker.settings import Settings
from broker.transport import FrameSink, TransportLink
from protocol import Codec


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """A server-initiated close, as the writer will carry it out."""

    code: int
    reason: str
    reconnect: bool = False
    retry_after: float = 0.0
    #: Send what is already queued first (a graceful drain); otherwise drop it.
    flush: bool = False


@dataclass(slots=True)
class ConnectionStatistics:
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    protocol_errors: int = 0


def new_client_id() -> str:
    """A client id: 72 random bits, URL-safe, 12 characters (``broker.client_ids``)."""
    return client_ids.new_client_id()


class ConnectionState:
    """The state of one connection; ``Connection.__init__`` sets every slot (documented there)."""

    __slots__ = (
        "_context",
        "_heartbeat",
        "_last_heard",
        "_latency",
        "_log_budget",
        "_take",
        "_write_timer",
        "address",
        "close_code",
        "close_reason",
        "close_request",
        "codec",
        "endpoint",
        "hub",
        "id",
        "link",
        "outbox",
        "overflow_cause",
        "remote",
        "settings",
        "sink",
        "slow_consumer",
        "started",
        "stats",
        "subscriber",
        "sweep_tick",
        "text",
        "websocket",
        "write_scope",
    )

    _context: contextvars.Context | None
    _heartbeat: float
    _last_heard: float
    _latency: Histogram | None
    _log_budget: int
    #: The endpoint's ``take_now`` while the reader reads (``Reader.take_message``).
    _take: Callable[[str | None, bytes | None], bool] | None
    _write_timer: asyncio.TimerHandle | None
    address: str | None
    close_code: int | None
    close_reason: str
    close_request: CloseRequest | None
    codec: Codec | None
    endpoint: str
    hub: Hub
    id: str
    link: TransportLink | None
    outbox: Outbox
    overflow_cause: str
    remote: str | None
    settings: Settings
    sink: FrameSink
    slow_consumer: str | None
    started: float
    stats: ConnectionStatistics
    subscriber: Subscriber
    sweep_tick: int | None
    text: bool
    websocket: WebSocket
    write_scope: anyio.CancelScope | None

    if TYPE_CHECKING:

        def _service(self) -> None:
            """One step of the writer without a task (``broker.link_writer``)."""
