"""Redis Cluster: one reader per master's sharded pub/sub connection, all reading at once.

redis-py's ``ClusterPubSub`` keeps one pub/sub connection per master that holds a subscription
(``node_pubsub_mapping``), and ``get_sharded_message()`` without a node polls them one after
another, giving each a share of the timeout: a publication that reaches master A while the reader
waits on an idle master B waits out B's share (measured: p50 220-350 ms with one channel, against
6-12 ms on one Redis server). Here every master's connection has a reader of its own
(``get_sharded_message(target_node=...)``), so a message on any master is handled as soon as it
arrives.

``ShardReaders.run`` starts a reader for each master in ``node_pubsub_mapping``; a reader ends
by itself once its master has left it. The mapping changes when this process subscribes to a channel
on a master it had none on, or unsubscribes its last one there (``changed()`` is called after
each ``SSUBSCRIBE``/``SUNSUBSCRIBE``), and when redis-py moves subscriptions to another master
after a topology change (a failover, a slot migration): looked at again every ``poll`` seconds.
Every reader is a task of ``run``'s task group, inside the pub/sub link's: they end with it.

A reader polls with a bounded timeout (``poll``): redis-py holds the connection's lock during a
bounded poll, which is what keeps its own reconciliation from closing the socket under a read;
a subscribe on an idle master waits for at most that long.

Connection failures: on the master that carries the process's health channel, the reader fails,
and with it the link (it reconnects, subscribes again and reports every channel's head, as when
the health check fails). On another master, as with redis-py's round robin, one failed master
does not stop the others: the reader logs it, asks redis-py to read the topology again (its
subscriptions then move to the promoted replica, whose subscribe confirmations report their
channels' heads, so the hub reads what went by from the stream), and tries again after a pause.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.exceptions import RedisClusterException, RedisError

from broker.logs import get_logger
from broker.writers_behind import WRITERS_BEHIND, let_writers_run

log = get_logger("broker.backplane.redis")

#: Longest a reader's poll holds its connection (and so delays a subscribe on an idle master).
POLL = 0.1
#: Pause before a failed master's reader tries again.
COOL_OFF = 1.0
#: Shortest time between two topology reads asked for by failed readers.
REPAIR_INTERVAL = 5.0

# What a broken connection, a timeout or a Redis that went away raise in redis-py.
_FAILURES = (RedisError, OSError, TimeoutError)
# And what its cluster client raises when no node answers, or a slot has no master just now.
_TOPOLOGY_FAILURES = (*_FAILURES, RedisClusterException)

Message = dict[str, Any]


class ShardReaders:
    """The readers of one pub/sub link's per-master connections (``pubsub``: a
    ``ClusterPubSub`` of ``cluster``)."""

    def __init__(
        self,
        cluster: Any,
        pubsub: Any,
        on_message: Callable[[Message], Awaitable[None]],
        *,
        health_channel: str,
        poll: float,
        timeout: float,
    ) -> None:
        self.cluster = cluster
        self.pubsub = pubsub
        self.on_message = on_message
        self.health_channel = health_channel
        self.poll = poll
        self.timeout = timeout
        #: Masters (node names, ``host:port``) with a reader.
        self._readers: set[str] = set()
        #: Masters whose last read failed (logged once per outage, not at every attempt).
        self._failing: set[str] = set()
        self._changed = anyio.Event()
        self._next_repair = 0.0

    def changed(self) -> None:
        """Subscriptions changed: look at the masters again now."""
        self._changed.set()

    async def run(self) -> None:
        """Keep one reader per master with a subscription; never returns (cancelled with the
        link)."""
        async with anyio.create_task_group() as tasks:
            while True:
                self._changed = anyio.Event()
                self._sync(tasks)
                with anyio.move_on_after(self.poll):
                    await self._changed.wait()

    def _sync(self, tasks: TaskGroup) -> None:
        # A reader whose master left the mapping ends by itself at its next poll (not cancelled:
        # it may be handing on a message it has read).
        for name in self.pubsub.node_pubsub_mapping:
            if name in self._readers:
                continue
            node = self.cluster.get_node(node_name=name)
            if node is None:
                continue  # Not in the topology just now: looked at again next time.
            self._readers.add(name)
            tasks.start_soon(self._read, node)

    async def _read(self, node: Any) -> None:
        name: str = node.name
        mapping: dict[str, Any] = self.pubsub.node_pubsub_mapping
        try:
            while (own := mapping.get(name)) is not None:
                if own.connection is None:
                    # Being connected by its first subscribe, or closed by redis-py before it
                    # leaves the mapping: nothing to read yet.
                    await anyio.sleep(self.poll / 10)
                    continue
                try:
                    message = await self.pubsub.get_sharded_message(
                        target_node=node, timeout=self.poll
                    )
                except _FAILURES as exc:
                    if mapping.get(name) is not own:
                        continue  # Retired by redis-py (closed under the read): not a failure.
                    if self._carries_health(name):
                        raise  # The link fails, reconnects and reports every head.
                    await self._cool_off(name, exc)
                    continue
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("backplane.shard_read_recovered", node=name)
                if message is not None:
                    await self.on_message(message)
                    if WRITERS_BEHIND.wanted:  # an outbox half full (``broker.writers_behind``)
                        await let_writers_run()
        finally:
            self._readers.discard(name)
            self._changed.set()

    def _carries_health(self, name: str) -> bool:
        try:
            owner = self.cluster.get_node_from_key(self.health_channel)
        except _TOPOLOGY_FAILURES:
            return True  # Unknown: fail the link rather than guess.
        return owner is None or owner.name == name

    async def _cool_off(self, name: str, exc: BaseException) -> None:
        if name not in self._failing:
            self._failing.add(name)
            log.warning("backplane.shard_read_failed", node=name, error=str(exc))
        now = time.monotonic()
        if now >= self._next_repair:
            self._next_repair = now + REPAIR_INTERVAL
            # A master that died answers no MOVED: read the topology again, so that redis-py
            # moves this master's subscriptions to the replica that replaces it.
            with anyio.move_on_after(self.timeout):
                try:
                    await self.cluster.nodes_manager.initialize()
                except _TOPOLOGY_FAILURES as failure:
                    log.info("backplane.topology_read_failed", error=str(failure))
        await anyio.sleep(COOL_OFF)
