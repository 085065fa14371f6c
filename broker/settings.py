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


class AuthMode(enum.Enum):
    #: No authentication: every connection is anonymous (loopback, or an explicit opt-in).
    NONE = "none"
    #: JWT connection tokens (broker/auth).
    JWT = "jwt"


class SubscribePolicy(enum.Enum):
    """Who may subscribe to the channels of a namespace (when authentication is on)."""

    #: Any authenticated connection.
    AUTHENTICATED = "authenticated"
    #: Only a connection whose ``channels`` claim matches the channel.
    CLAIM = "claim"
    #: Only with a subscription token naming the channel and the user (a private namespace).
    TOKEN = "token"


class PublishPolicy(enum.Enum):
    """Who may publish in the channels of a namespace (when authentication is on)."""

    #: Any authenticated connection.
    AUTHENTICATED = "authenticated"
    #: Only a connection whose ``publish`` claim matches the channel.
    CLAIM = "claim"
    #: Only a connection subscribed to the channel.
    SUBSCRIBERS = "subscribers"


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    #: Seconds a SIGTERM/SIGINT drain may take before remaining connections are cut.
    shutdown_grace: Seconds = 10.0
    #: Under ``--workers N``: whole seconds the supervisor waits for a worker to answer its health
    #: check before it kills and replaces it (and its clients with it). uvicorn's own default, 5,
    #: kills busy but healthy workers on a saturated machine (seen with tens of thousands of
    #: connections arriving at once); a worker that is truly stuck is replaced after this long.
    worker_healthcheck_timeout: Annotated[int, msgspec.Meta(ge=1, le=600)] = 20
    #: Browser origins allowed to open a WebSocket; empty allows the broker's own origin only (the
    #: ``Origin`` must match ``Host``), ``["*"]`` allows any. Clients sending no Origin are let in.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    #: Seconds from accept within which a client must complete its HTTP request or WebSocket
    #: handshake (request line, headers and body); a slower one is answered 408 and closed.
    handshake_timeout: Seconds = 10.0
    #: Most bytes of a request's line and headers together; more is answered 431 (414 while
    #: still in the request line) and closed.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    #: Addresses (or CIDR networks) of proxies whose ``X-Forwarded-For`` names the client;
    #: empty trusts none.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    #: TLS (``wss://``, ``https://``) without a proxy: the certificate chain file (PEM); empty
    #: serves plain ``ws://`` and ``http://``.
    tls_certfile: str = ""
    #: The private key file (PEM); empty when the key is in ``tls_certfile``.
    tls_keyfile: str = ""
    #: The password of an encrypted private key; empty when it is not encrypted.
    tls_keyfile_password: str = ""
    #: CA certificates (PEM): when set, every client must present a certificate they signed
    #: (mutual TLS); empty asks clients for none.
    tls_ca_certs: str = ""


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
    #: Most frames (the first and its continuations) one fragmented message may arrive in; more
    #: closes the connection with 1009.
    max_fragments: PositiveInt = 1024
    #: Serve ``/conformance/echo``, an echo route on the same stack and limits as ``/v1/ws``, for
    #: RFC 6455 conformance tests. Off by default.
    conformance_echo: bool = False


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
    #: Most connections per process, counted from accept (WebSocket, HTTP and still in their
    #: handshake); 0 means no limit.
    max_connections: NonNegativeInt = 10_000
    #: Most connections from one client address; 0 (the default) means no limit. Behind a proxy
    #: or a NAT many users share an address.
    max_connections_per_ip: NonNegativeInt = 0
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
    #: Who may subscribe when authentication is on: ``authenticated``, ``claim`` or ``token``.
    subscribe: SubscribePolicy = SubscribePolicy.CLAIM
    #: Who may publish when authentication is on: ``authenticated``, ``claim`` or ``subscribers``.
    publish: PublishPolicy = PublishPolicy.CLAIM
    #: Whether a client that may subscribe may also read ``history`` (the HTTP API always may).
    history_for_subscribers: bool = True
    #: Whether a client that may subscribe may also read ``presence`` (the HTTP API always may).
    presence_for_subscribers: bool = True
    #: Whether connections without a user (``auth.anonymous_connect``) may subscribe and read.
    anonymous: bool = False


class BackplaneSettings(_Section, frozen=True):
    #: ``memory`` (one process, the default) or ``redis``.
    kind: BackplaneKind = BackplaneKind.MEMORY
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Several Redis instances to shard channels across; overrides ``redis_url`` when not empty.
    redis_urls: list[str] = msgspec.field(default_factory=list)
    #: Redis Sentinels (``host:port``) that name the master of ``redis_sentinel_master``; when
    #: not empty, the backplane connects to that master, and ``redis_url`` gives only the user,
    #: password, database and TLS of the master's connections.
    redis_sentinels: list[str] = msgspec.field(default_factory=list)
    #: The master's name in the Sentinels' configuration (``sentinel monitor <name> ...``).
    redis_sentinel_master: str = "mymaster"
    #: Redis Cluster: ``redis_url`` (or each of ``redis_urls``) is a node to discover it from;
    #: channels hash to slots and live publications use sharded pub/sub (Redis 7 or newer).
    redis_cluster: bool = False
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
    #: Seconds a publish's ``idempotency_key`` is remembered (per channel): a repeat within it is
    #: answered with the first publication's offset and epoch and not published again. It must
    #: outlast the longest a publisher retries (the Python client: ``publish_retry_for``).
    idempotency_window: Seconds = 300.0


class LogSettings(_Section, frozen=True):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO
    #: Protocol errors logged per connection; later ones are only counted.
    max_protocol_errors_logged: NonNegativeInt = 3
    #: Lines per second, across all clients, about what clients do wrong (bad handshakes,
    #: timeouts, invalid frames, requests cut short); the rest are counted in the next line.
    client_faults_per_second: Seconds = 10.0


class MonitorSettings(_Section, frozen=True):
    #: Seconds between the blocked-loop watch's wake-ups (each measures how late it woke).
    loop_check_interval: Annotated[float, msgspec.Meta(ge=0.01, le=10)] = 0.1
    #: Seconds of event-loop lag above which ``loop.blocked`` is logged (at most one warning per
    #: 10 s; every such stall is counted in ``broker_event_loop_stalls_total``).
    loop_lag_warning: Seconds = 0.25
    #: Measure each write's delivery latency (``broker_delivery_latency_seconds``). Off, the
    #: histogram is not exported and each write of publications saves a clock read and a bucket
    #: search (about 0.3 µs); the benchmark that compares the two is in docs/performance.md.
    delivery_latency: bool = True
    #: Measure one write in this many (per encoding); 1 measures every write. Quantiles and the
    #: mean stay unbiased; ``_count`` then counts the measured writes.
    delivery_latency_every: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8


class ClaimNames(_Section, frozen=True):
    """The JWT claims the broker reads, by name."""

    #: The user id.
    sub: str = "sub"
    #: Channel patterns the client may subscribe to.
    channels: str = "channels"
    #: Channel patterns the client may publish to.
    publish: str = "publish"
    #: An object shown to others in presence.
    info: str = "info"
    #: Channels the server subscribes the client to at connect.
    subs: str = "subs"
    #: In a subscription token: the channel it is for.
    channel: str = "channel"


class AuthSettings(_Section, frozen=True):
    #: ``none`` (every connection anonymous; only on a loopback ``server.host`` unless
    #: ``insecure_allow_anonymous``) or ``jwt``.
    mode: AuthMode = AuthMode.NONE
    #: Allow ``mode = "none"`` on a non-loopback host (and an API without keys); logged.
    insecure_allow_anonymous: bool = False
    #: Accepted JWT algorithms; a token's own ``alg`` never chooses, ``none`` is refused.
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["HS256"])
    #: Secrets for HS256/384/512 (several at once for rotation).
    hmac_secrets: list[str] = msgspec.field(default_factory=list)
    #: PEM public keys (text) for RS*/PS*/ES*/EdDSA.
    public_keys: list[str] = msgspec.field(default_factory=list)
    #: Files holding one PEM public key each.
    public_key_files: list[str] = msgspec.field(default_factory=list)
    #: A JWKS document: an ``https://`` URL or a file path; empty for none.
    jwks: str = ""
    #: Seconds a fetched JWKS document is used when its response sets no max-age.
    jwks_cache_ttl: Seconds = 300.0
    #: Least seconds between two fetches of the JWKS document (an unknown ``kid`` triggers one).
    jwks_min_refresh_interval: NonNegativeSeconds = 30.0
    #: Seconds one fetch of the JWKS document may take.
    jwks_timeout: Seconds = 5.0
    #: Required ``aud`` claim; empty: not checked.
    audience: str = ""
    #: Required ``iss`` claim; empty: not checked.
    issuer: str = ""
    #: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    leeway: NonNegativeSeconds = 5.0
    #: Seconds a connection without a token in its handshake has to send ``connect``.
    connect_timeout: Seconds = 5.0
    #: In ``jwt`` mode, accept connections without a token as anonymous.
    anonymous_connect: bool = False
    #: Verified tokens remembered, so a reconnecting client costs no signature check.
    verified_cache_size: NonNegativeInt = 10_000
    claims: ClaimNames = msgspec.field(default_factory=ClaimNames)


class ApiSettings(_Section, frozen=True):
    #: API keys of the HTTP API (several for rotation); any one is accepted.
    keys: list[str] = msgspec.field(default_factory=list)
    #: A file with more API keys, one per line (``#`` comments and blank lines skipped).
    keys_file: str = ""
    #: API keys that may only publish (``/v1/publish``, ``/v1/broadcast``).
    publish_keys: list[str] = msgspec.field(default_factory=list)
    #: Whether ``/metrics`` needs an API key too (when keys are configured).
    metrics_require_key: bool = True


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
    monitor: MonitorSettings = msgspec.field(default_factory=MonitorSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)

    def namespace(self, name: str) -> NamespaceSettings:
        """Options of namespace ``name``; the default namespace's when it is not configured."""
        return self.namespaces.get(name, self.default_namespace)


def sentinel_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Sentinel's ``host:port``; None when it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)
