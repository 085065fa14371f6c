"""The Redis backplane: any number of broker processes, on one machine or many, as one broker.

On one Redis server, on several (client-side shards), on the master that Redis Sentinels name, or
on a Redis Cluster (hash-tagged keys, sharded pub/sub): see ``redis_connect`` and
docs/scaleout.md.

Per shard (one Redis server; channels are spread over ``backplane.redis_urls`` by a stable hash
of their name, so every process puts a channel on the same server):

* one command connection pool runs the Lua scripts (``redis_scripts``) and the reads;
* one publish pipeline (``redis_pipeline``) queues every publish of this process and sends what
  is queued as one redis-py pipeline per round trip, in order;
* one pub/sub connection (on a Redis Cluster, one per master, each read by its own task:
  ``redis_shard_readers``) carries live publications of the channels this process watches, and
  only those: it subscribes when the hub watches a channel and unsubscribes when nobody here
  wants it any more;
* a health loop publishes a token on a channel of this process's own every ``health_interval``
  and expects it back on the pub/sub connection: a pub/sub link can die silently while commands
  still work, and ``/readyz`` must see it.

When the pub/sub link fails, the shard is not ready (publishes answer ``unavailable``, never a
false success), reconnects with backoff, subscribes again to every watched channel, and for each
reports the channel's head (``ChannelHead``); the hub then reads what it missed from the stream
by offset, and reports what Redis no longer retains as a ``gap``.

Watching a channel: the shard subscribes to its pub/sub channel, and only once Redis has
confirmed the subscription does it read the channel's head and report it (``ChannelHead``). So
every publication is either counted in that head (made before the head read) or arrives live (made
after the subscription took effect), and one made in between is both: the hub drops it as already
counted. A channel unwatched and watched again while still subscribed has its head read at once.

The shard's history reads (``head``, ``read``, ``latest``) are in ``redis_history``; presence and
join/leave announcements in ``redis_presence``; the broker's bus in ``redis_bus``.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from broker.backoff import Backoff
from broker.backplane.base import (
    BackplaneUnavailable,
    ChannelHead,
    Deliver,
    DeliverNow,
    Head,
    LivePublication,
    Page,
    RemoteAnnouncement,
)
from broker.backplane.control import Control, ControlAnswer
from broker.backplane.redis_bus import RedisBus
from broker.backplane.redis_cluster_pipeline import ClusterPublishPipeline
from broker.backplane.redis_connect import connect
from broker.backplane.redis_history import ShardHistory
from broker.backplane.redis_pipeline import PublishPipeline, Settled
from broker.backplane.redis_presence import ShardPresence
from broker.backplane.redis_scripts import (
    ENCODING_TAGS,
    HEAD_SCRIPT,
    PUBLISH_SCRIPT,
    TAG_CODECS,
    RedisKeys,
    head_keep_ms,
)
from broker.backplane.redis_shard_readers import POLL, ShardReaders
from broker.logs import get_logger, redact_text
from broker.monitor.histogram import Histogram
from broker.settings import BackplaneSettings, NamespaceSettings
from broker.writers_behind import WRITERS_BEHIND, let_writers_run
from protocol import ClientInfo, Codec, Encoding, Join, Leave, PublicationFrames

log = get_logger("broker.backplane.redis")

#: Delays between attempts to bring the pub/sub link back: up to 0.2 s after the first failure,
#: never more than 5 s, however long Redis stays away.
_RECONNECT = Backoff(base=0.1, cap=5.0)
#: A health token's deadline noticed this much late or more was passed while this process's own
#: event loop was blocked: not counted against the link (``_check_health``).
STALL_GRACE = 0.25

_announcement = msgspec.json.Decoder(Join | Leave)
# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)


class RedisShard(ShardHistory, ShardPresence):
    """One Redis server's share of the channels. Its history reads are in ``redis_history``, its
    presence and announcements in ``redis_presence``."""

    def __init__(self, url: str, settings: BackplaneSettings, process: str) -> None:
        self.url = url
        self.settings = settings
        self.process = process
        #: Redis Cluster: keys of a channel share a hash tag, pub/sub is sharded.
        self.cluster = settings.redis_cluster
        self.keys = RedisKeys(settings.key_prefix, tagged=self.cluster)
        self.connected = connect(url, settings)
        #: For logs: the URL with its password masked, or the Sentinels.
        self.name = self.connected.name
        self.redis = self.connected.redis
        self._head_script = self.redis.register_script(HEAD_SCRIPT)
        pipeline = ClusterPublishPipeline if self.cluster else PublishPipeline
        self.pipeline = pipeline(
            self.redis,
            PUBLISH_SCRIPT,
            size=settings.publish_queue,
            timeout=settings.timeout,
            ready=lambda: self.ready,
        )
        #: The command the publish script publishes with (``SPUBLISH`` on Redis Cluster).
        self.publish_command = "SPUBLISH" if self.cluster else "PUBLISH"
        self.watched: set[str] = set()
        self._subscribed: set[str] = set()
        self._changed = anyio.Event()
        self._pubsub: PubSub | None = None
        self._shard_readers: ShardReaders | None = None
        self._last_echo = -math.inf
        self._connected = False
        self._failures = 0
        #: Links in a row that subscribed and failed before a health token came back over them:
        #: they back off as failures do, instead of starting over at the shortest delay.
        self._flaps = 0
        self._up_since: float | None = None
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        #: Presence writes of this process not yet done, per channel, and who waits for them
        #: (``_presence_settled``): a presence read, or a join/leave announcement, of the same
        #: channel goes after them, so that whoever saw ``subscribed`` or a ``join`` finds the
        #: member in presence.
        self._presence_pending: dict[str, int] = {}
        self._presence_waiters: dict[str, anyio.Event] = {}
        self._deliver: Deliver | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        #: Set on the shard that carries the broker's bus (the first): handles its messages.
        self.on_bus: Callable[[bytes], Awaitable[None]] | None = None
        #: For metrics: pub/sub links established, live publications received over pub/sub,
        #: and seconds per history read (``read``, ``latest``).
        self.links = 0
        #: Health tokens whose deadline passed while this process's loop was blocked (not
        #: counted as a failure of the link).
        self.stalled_health_checks = 0
        self.received = 0
        self.read_seconds = Histogram()

    @property
    def ready(self) -> bool:
        fresh = time.monotonic() - self._last_echo < 3 * self.settings.health_interval + 1
        return self._connected and fresh

    # --- life -----------------------------------------------------------------------------------

    async def run(self, deliver: Deliver, *, task_status: TaskStatus[None]) -> None:
        self._deliver = deliver
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                await tasks.start(self.pipeline.run)
                tasks.start_soon(self._link)
                tasks.start_soon(self._renew_presence)
                task_status.started()
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await self.connected.aclose()

    async def _link(self) -> None:
        """Keep the pub/sub link up: connect, subscribe, listen; on failure, back off and redo."""
        while True:
            try:
                await self._serve_link()
            except* _FAILURES as failures:
                # Once per outage (not again for a link that keeps coming up and failing).
                if (self._connected or self._failures == 0) and self._flaps == 0:
                    error = str(failures.exceptions[0])
                    log.warning("backplane.link_lost", url=redact_text(self.url), error=error)
                self._connected = False
            except* Exception as failures:
                # A bug, not an outage: say so loudly, once per failure, and reconnect as for an
                # outage rather than leave the process up without its link.
                log.error(
                    "backplane.link_failed",
                    url=redact_text(self.url),
                    exc_info=failures.exceptions[0],
                )
                self._connected = False
            finally:
                up, self._up_since = self._up_since, None
                if up is not None:
                    # It came up: a flap if no health token came back over it since.
                    self._flaps = self._flaps + 1 if self._last_echo < up else 0
                self._connected = False
                self._subscribed.clear()
                pubsub, self._pubsub = self._pubsub, None
                if pubsub is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                        try:
                            await pubsub.aclose()
                        except _FAILURES:
                            pass
            self._failures += 1
            # Full jitter, capped: many processes must not all hammer a Redis that comes back, nor
            # one process a link that subscribes and then fails at once (an ACL without publish).
            await anyio.sleep(_RECONNECT.delay(max(self._failures, self._flaps)))

    async def _serve_link(self) -> None:
        if self.cluster and self._failures:
            # After a failover the pub/sub client would go on trying the dead node: read the
            # cluster's topology again first.
            cluster: Any = self.redis
            await cluster.nodes_manager.initialize()
        pubsub = self.redis.pubsub()
        self._pubsub = pubsub
        extra = [self.keys.bus()] if self.on_bus is not None else []
        await self._subscribe(pubsub, self.keys.health(self.process), *extra)
        self._connected = True
        self._failures = 0
        self._up_since = time.monotonic()
        self.links += 1
        log.info("backplane.link_up", url=self.name)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._reconcile, pubsub)
            tasks.start_soon(self._check_health)
            # A Redis that restarted has lost this process's presence entries: write them again
            # now rather than at the next renewal.
            tasks.start_soon(self._write_all_presence)
            if self.cluster:
                await self._read_shards(pubsub)
            while True:
                message = await self._next_message(pubsub, self.settings.health_interval)
                if message is not None:
                    await self._on_message(message)
                    if WRITERS_BEHIND.wanted:  # an outbox half full (``broker.writers_behind``)
                        await let_writers_run()

    async def _reconcile(self, pubsub: PubSub) -> None:
        """Make the pub/sub subscriptions follow ``watched``."""
        while True:
            wanted = set(self.watched)
            new = wanted - self._subscribed
            gone = self._subscribed - wanted
            if new:
                await self._subscribe(pubsub, *(self.keys.live(c) for c in new))
                self._subscribed |= new
            if gone:
                await self._unsubscribe(pubsub, *(self.keys.live(c) for c in gone))
                self._subscribed -= gone
            if wanted == self.watched:
                self._changed = anyio.Event()
                await self._changed.wait()

    # --- pub/sub: plain, or sharded on Redis Cluster ----------------------------------------------

    async def _subscribe(self, pubsub: PubSub, *channels: str) -> None:
        if self.cluster:
            await pubsub.ssubscribe(*channels)
            self._shards_changed()
        else:
            await pubsub.subscribe(*channels)

    async def _unsubscribe(self, pubsub: PubSub, *channels: str) -> None:
        if self.cluster:
            await pubsub.sunsubscribe(*channels)
            self._shards_changed()
        else:
            await pubsub.unsubscribe(*channels)

    async def _next_message(self, pubsub: PubSub, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        plain: dict[str, Any] | None = await pubsub.get_message(timeout=timeout)
        return plain

    async def _read_shards(self, pubsub: PubSub) -> None:
        """Redis Cluster: read every master's pub/sub connection at once (``ShardReaders``), for
        as long as the link lasts."""
        readers = ShardReaders(
            self.redis,
            pubsub,
            self._on_message,
            health_channel=self.keys.health(self.process),
            poll=min(self.settings.health_interval, POLL),
            timeout=self.settings.timeout,
        )
        self._shard_readers = readers
        try:
            await readers.run()
        finally:
            self._shard_readers = None

    def _shards_changed(self) -> None:
        if self._shard_readers is not None:
            self._shard_readers.changed()

    async def publish_raw(self, channel: str, body: bytes) -> int:
        """``PUBLISH`` (``SPUBLISH`` on a cluster) ``body``; how many connections received it."""
        if self.cluster:
            return int(await self.redis.spublish(channel, body))
        return int(await self.redis.publish(channel, body))

    async def _check_health(self) -> None:
        channel = self.keys.health(self.process)
        timeout = self.settings.timeout
        while True:
            began = time.monotonic()
            with anyio.move_on_after(timeout) as waited:
                await self.publish_raw(channel, str(began).encode())
            if waited.cancelled_caught:
                late = time.monotonic() - began - timeout
                if late < STALL_GRACE:
                    raise TimeoutError(f"no answer to the health token within {timeout:g} s")
                # The deadline was noticed late: this process's own loop was blocked (starved of
                # CPU, a long collection), not Redis. Tearing the link down would resubscribe
                # every watched channel and read every head, more load on a loop that is already
                # behind; try again instead (a Redis that is really gone fails the next round).
                self.stalled_health_checks += 1
                log.info("backplane.health_check_stalled", url=self.name, late=round(late, 3))
            await anyio.sleep(self.settings.health_interval)

    async def _on_message(self, message: dict[str, Any]) -> None:
        deliver = self._deliver
        assert deliver is not None
        kind = message["type"]
        channel_key = message["channel"].decode()
        if kind in ("subscribe", "ssubscribe"):
            if channel_key.startswith(self.keys.live_prefix()):
                channel = self.keys.channel_of(channel_key)
                # Subscribed: every later publication arrives live. The head read now tells the
                # hub where live delivery starts (and, after an outage, what it missed).
                assert self._tasks is not None
                self._tasks.start_soon(self._report_head, channel)
            return
        if kind not in ("message", "smessage"):
            return
        data: bytes = message["data"]
        if channel_key == self.keys.health(self.process):
            self._last_echo = time.monotonic()
            self._flaps = 0  # the link works both ways
            return
        if self.on_bus is not None and channel_key == self.keys.bus():
            await self.on_bus(data)
            return
        channel = self.keys.channel_of(channel_key)
        if data.startswith(b"p|"):
            self.received += 1
            _, offset, epoch, tag, publisher, payload = data.split(b"|", 5)
            await deliver(
                LivePublication(
                    PublicationFrames(  # positional: no dictionary of keywords per call
                        channel,
                        int(offset),
                        epoch.decode(),
                        publisher.decode() or None,
                        msgspec.Raw(payload),
                        TAG_CODECS[tag],
                    )
                )
            )
        elif data.startswith(b"a|"):
            _, process, body = data.split(b"|", 2)
            if process.decode() != self.process:
                await deliver(RemoteAnnouncement(channel, _announcement.decode(body)))

    async def _report_head(self, channel: str) -> None:
        try:
            head = await self.head(channel)
        except BackplaneUnavailable:
            return  # The link will fail too, and report every head again once it is back.
        if channel in self.watched and self._deliver is not None:
            await self._deliver(ChannelHead(channel, head))

    # --- requests -------------------------------------------------------------------------------

    def watch(self, channel: str) -> None:
        self.watched.add(channel)
        self._changed.set()
        if channel in self._subscribed:
            # Unwatched and watched again before ``_reconcile`` caught up: the subscription is
            # still in place, so no confirmation will come to report the head. Report it now.
            # (Should ``_reconcile`` be unsubscribing it right now, it subscribes again and that
            # confirmation reports the head once more: the hub then fills what went by.)
            self._spawn(self._report_head, channel)

    def unwatch(self, channel: str) -> None:
        self.watched.discard(channel)
        self._changed.set()

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        on_settled: Settled | None = None,
        idempotency_key: str | None = None,
    ) -> asyncio.Future[Head]:
        """Queue the publication in the pipeline (waiting only while it is full); the future
        ends with its head or ``BackplaneUnavailable``, then ``on_settled`` is called. Raises
        ``BackplaneUnavailable`` at once, without trying Redis, while the shard is not ready."""
        if not self.ready:
            raise BackplaneUnavailable("redis is not reachable")
        keys: tuple[str, ...] = (
            self.keys.meta(channel),
            self.keys.stream(channel),
            self.keys.live(channel),
        )
        if idempotency_key is not None:
            keys += (self.keys.idempotency(channel, idempotency_key),)
        args = (
            secrets.token_urlsafe(6),
            options.history_size,
            int(options.history_ttl * 1000),
            head_keep_ms(options),
            int(time.time() * 1000),
            ENCODING_TAGS[codec.encoding],
            publisher or "",
            bytes(data),
            int(self.settings.idempotency_window * 1000),
            self.publish_command,
        )
        return await self.pipeline.submit(keys, args, on_settled)

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        idempotency_key: str | None = None,
    ) -> Head:
        future = await self.publish_submit(
            channel, data, codec, publisher, options, idempotency_key=idempotency_key
        )
        # Cancelled while waiting (an HTTP client gone): the future is cancelled with it, and the
        # pipeline does not send it unless its batch is already on its way.
        return await future

    def _spawn(self, task: Any, *args: Any) -> None:
        if self._tasks is not None:
            self._tasks.start_soon(task, *args)


class RedisBackplane:
    """Channels spread over one or more Redis servers (``redis_urls``) by a stable hash."""

    kind = "redis"

    def __init__(self, settings: BackplaneSettings) -> None:
        self.settings = settings
        #: This process's id in announcements and health checks.
        self.process = secrets.token_urlsafe(9)
        urls = settings.redis_urls or [settings.redis_url]
        if settings.redis_cluster:
            urls = urls[:1]  # one cluster, discovered from its first node
        self.shards = [RedisShard(url, settings, self.process) for url in urls]
        #: The broker's bus (control requests, room frames), on the first shard.
        self.bus = RedisBus(self.shards[0], settings, self.process)

    def shard(self, channel: str) -> RedisShard:
        # crc32, not hash(): the same on every process and every run.
        return self.shards[zlib.crc32(channel.encode()) % len(self.shards)]

    @property
    def ready(self) -> bool:
        return all(shard.ready for shard in self.shards)

    async def run(
        self,
        deliver: Deliver,
        *,
        task_status: TaskStatus[None],
        deliver_now: DeliverNow | None = None,
    ) -> None:
        # ``deliver_now`` is for ``publish_now``: never here, where Redis has the last word.
        self.bus.deliver = deliver
        async with anyio.create_task_group() as tasks:
            for shard in self.shards:
                await tasks.start(shard.run, deliver)
            task_status.started()

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head:
        # ``converted`` is not sent: each process converts once, for its own subscribers.
        return await self.shard(channel).publish(
            channel, data, codec, publisher, options, idempotency_key
        )

    async def publish_submit(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        on_settled: Settled | None = None,
        idempotency_key: str | None = None,
    ) -> asyncio.Future[Head]:
        return await self.shard(channel).publish_submit(
            channel, data, codec, publisher, options, on_settled, idempotency_key
        )

    def publish_now(
        self,
        channel: str,
        data: msgspec.Raw,
        codec: Codec,
        publisher: str | None,
        options: NamespaceSettings,
        converted: dict[Encoding, msgspec.Raw] | None = None,
        idempotency_key: str | None = None,
    ) -> Head | None:
        return None  # Redis assigns the offset: a publish always waits (``publish_submit``).

    def watch(self, channel: str) -> Head | None:
        self.shard(channel).watch(channel)
        return None  # A ChannelHead event follows once the subscription is in place.

    def unwatch(self, channel: str) -> None:
        self.shard(channel).unwatch(channel)

    async def read(
        self, channel: str, after: int, limit: int | None, options: NamespaceSettings
    ) -> Page:
        return await self.shard(channel).read(channel, after, limit, options)

    async def latest(self, channel: str, limit: int | None, options: NamespaceSettings) -> Page:
        return await self.shard(channel).latest(channel, limit, options)

    def presence_add(self, channel: str, member: ClientInfo) -> None:
        self.shard(channel).presence_add(channel, member)

    def presence_remove(self, channel: str, member: ClientInfo) -> None:
        self.shard(channel).presence_remove(channel, member)

    async def presence(self, channel: str) -> list[ClientInfo]:
        return await self.shard(channel).presence(channel)

    def announce(self, channel: str, message: Join | Leave) -> None:
        self.shard(channel).announce(channel, message)

    # --- the bus (``redis_bus``) ----------------------------------------------------------------

    def room_publish(self, room: str, payload: bytes) -> None:
        self.bus.room_publish(room, payload)

    async def control(self, command: Control) -> list[ControlAnswer]:
        return await self.bus.control(command)

    def answer(self, answer: ControlAnswer) -> None:
        self.bus.answer(answer)
