"""The broker's settings: one msgspec Struct tree, every field with its default.

``config/broker.toml`` lists the same settings with comments; ``broker.config`` loads them from a
TOML file plus ``BROKER_SECTION__KEY`` environment variables and turns any mistake into one
``ConfigError`` naming the key, the value and what was expected.

Every Struct forbids unknown fields on purpose: a misspelt key in an operator's file must stop
start-up rather than be ignored silently.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeSeconds = Annotated[float, msgspec.Meta(ge=0)]
#: At most one second: a longer wait between writes is a unit mistake (milliseconds meant), not a
#: trade-off anyone wants.
FlushInterval = Annotated[float, msgspec.Meta(ge=0, le=1)]
NamespaceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-.@/]{1,64}\Z")]


class OverflowPolicy(enum.Enum):
    """What happens when a connection's outbox is full."""

    #: Send ``disconnect`` (code 4008) and close: the client reconnects and recovers.
    DISCONNECT = "disconnect"
    #: Drop the oldest queued publications and tell the client with a ``gap`` message.
    DROP_OLDEST = "drop_oldest"


class LogFormat(enum.Enum):
    AUTO = "auto"  # JSON lines when stdout is not a terminal, readable console output when it is
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class BackplaneKind(enum.Enum):
    MEMORY = "memory"
    REDIS = "redis"


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    #: Seconds a SIGTERM/SIGINT drain may take before remaining connections are cut.
    shutdown_grace: Seconds = 10.0
    #: Browser origins allowed to open a WebSocket; empty allows any origin.
    allowed_origins: list[str] = msgspec.field(default_factory=list)


class WebSocketSettings(_Section, frozen=True):
    #: Largest client message accepted, in bytes; a larger one closes the connection with 1009.
    max_message_bytes: PositiveInt = 64 * 1024
    #: permessage-deflate costs CPU on every frame and invites decompression bombs: off by default.
    per_message_deflate: bool = False
    #: Seconds within which a client must send something (``ping`` if nothing else).
    heartbeat: Seconds = 25.0
    #: Extra seconds of silence tolerated past ``heartbeat`` before closing with 4009.
    heartbeat_grace: NonNegativeSeconds = 10.0
    #: Seconds one write to a client may stay stuck before the client is dropped as too slow.
    write_timeout: Seconds = 10.0
    #: High-water mark of the transport's own write buffer, in bytes, above which the writer waits.
    transport_buffer_bytes: PositiveInt = 64 * 1024
    #: Seconds a close handshake may take before the connection is cut.
    close_timeout: Seconds = 5.0


class QueueSettings(_Section, frozen=True):
    #: Most messages waiting in one connection's outbox.
    max_messages: PositiveInt = 1000
    #: Most bytes waiting in one connection's outbox.
    max_bytes: PositiveInt = 1024 * 1024
    #: ``disconnect`` or ``drop_oldest``.
    overflow: OverflowPolicy = OverflowPolicy.DISCONNECT
    #: Most messages sent together in one batch frame on ``/v1/ws``.
    max_batch: PositiveInt = 64
    #: Bytes above which a batch frame is closed (a single larger message still goes alone), so
    #: that batches stay within what clients accept (the Python ``websockets`` default: 1 MiB).
    max_batch_bytes: PositiveInt = 256 * 1024
    #: Seconds a write of publications may wait after the last one, so that a sustained stream
    #: leaves in one write (and batch frames) per interval instead of one per message. One after
    #: a quiet interval, and replies, are not delayed; 0 writes right after each loop turn.
    flush_interval: FlushInterval = 0.005


class HubSettings(_Section, frozen=True):
    #: Commands that may wait in the hub's mailbox before senders wait for room.
    mailbox_size: PositiveInt = 4096


class LimitSettings(_Section, frozen=True):
    #: Most WebSocket connections per process; 0 means no limit.
    max_connections: NonNegativeInt = 10_000
    #: Seconds a refused client is told to wait (``retry_after``) at the connection limit.
    retry_after: NonNegativeSeconds = 5.0
    #: Most channels one connection may subscribe to.
    max_subscriptions: PositiveInt = 256
    #: Publishes per second one connection may make (token bucket refill rate); 0 means no limit.
    publish_rate: NonNegativeSeconds = 0.0
    #: Publishes one connection may make in a burst above ``publish_rate``.
    publish_burst: PositiveInt = 100
    #: Rate-limited publishes in a row after which the connection is closed with 4029.
    rate_limit_strikes: PositiveInt = 50
    #: Seconds a connection may stay without any subscription before it is closed; 0 means never.
    idle_timeout: NonNegativeSeconds = 0.0


class NamespaceSettings(_Section, frozen=True):
    #: Publications kept per channel for ``history`` and recovery; 0 keeps none.
    history_size: NonNegativeInt = 0
    #: Seconds a publication is kept; 0 keeps it until ``history_size`` evicts it.
    history_ttl: NonNegativeSeconds = 0.0
    #: Whether ``presence`` answers for channels of this namespace.
    presence: bool = False
    #: Whether subscribers get ``join`` and ``leave`` messages.
    join_leave: bool = False
    #: Whether clients may publish (the HTTP API always may).
    allow_publish: bool = True


class BackplaneSettings(_Section, frozen=True):
    #: ``memory`` (one process, the default) or ``redis``.
    kind: BackplaneKind = BackplaneKind.MEMORY
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Several Redis instances to shard channels across; overrides ``redis_url`` when not empty.
    redis_urls: list[str] = msgspec.field(default_factory=list)
    #: Prefix of every Redis key and pub/sub channel, so several brokers can share one Redis.
    key_prefix: str = "broker"
    #: Seconds a Redis command may take before the backplane counts Redis as down.
    timeout: Seconds = 2.0
    #: Seconds a presence entry lives unless its process renews it (a dead process's members
    #: vanish after this).
    presence_ttl: Seconds = 30.0
    #: Seconds between the round trips that check the pub/sub link is alive (``/readyz``).
    health_interval: Seconds = 1.0
    #: Publishes per Redis server queued or in flight in this process's publish pipeline; a
    #: publisher waits for room beyond it.
    publish_queue: PositiveInt = 1024


class LogSettings(_Section, frozen=True):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO
    #: Protocol errors logged per connection; later ones are only counted.
    max_protocol_errors_logged: NonNegativeInt = 3


class ConsoleSettings(_Section, frozen=True):
    #: The web console at ``/console``: ``"auto"`` (on only when ``server.host`` is a loopback
    #: address), ``true`` or ``false``.
    enabled: bool | Literal["auto"] = "auto"


class Settings(_Section, frozen=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    websocket: WebSocketSettings = msgspec.field(default_factory=WebSocketSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    default_namespace: NamespaceSettings = msgspec.field(default_factory=NamespaceSettings)
    namespaces: dict[NamespaceName, NamespaceSettings] = msgspec.field(default_factory=dict)
    backplane: BackplaneSettings = msgspec.field(default_factory=BackplaneSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)

    def namespace(self, name: str) -> NamespaceSettings:
        """Options of namespace ``name``; the default namespace's when it is not configured."""
        return self.namespaces.get(name, self.default_namespace)
