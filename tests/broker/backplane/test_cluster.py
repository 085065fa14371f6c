"""Redis Cluster: a real local cluster of three masters with a replica each (started by the test
on private ports). Every key of a channel shares its hash tag, so the publish script runs on the
node that owns the channel's slot; live publications use sharded pub/sub. Two brokers on the
cluster act as one, and a master killed with SIGKILL, its replica promoted, costs nothing: every
publication arrives once, in order, in one epoch per channel."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio as aioredis

from broker.client import Backoff, connect
from broker.settings import BackplaneKind, BackplaneSettings, NamespaceSettings, Settings
from protocol import Encoding, Publication
from tests.broker.backplane.test_behaviour import clients, serve_ready, subscribe
from tests.conftest import TIMEOUT
from tests.redis_cluster import RedisClusterServers
from tests.wsclient import ProtocolClient

pytestmark = pytest.mark.anyio

CHANNELS = [f"h:room-{i}" for i in range(6)]


def on_cluster(cluster: RedisClusterServers) -> Settings:
    return Settings(
        namespaces={"h": NamespaceSettings(history_size=1000)},
        backplane=BackplaneSettings(
            kind=BackplaneKind.REDIS,
            redis_url=cluster.url,
            redis_cluster=True,
            health_interval=0.2,
            timeout=1.0,
        ),
    )


async def collect(
    client: ProtocolClient, counts: dict[str, int]
) -> dict[str, list[tuple[int, str, object]]]:
    """Publications per channel until each channel has ``counts[channel]`` of them."""
    got: dict[str, list[tuple[int, str, object]]] = defaultdict(list)
    async with asyncio.timeout(TIMEOUT * 3):
        while any(len(got[c]) < n for c, n in counts.items()):
            message = await client.recv()
            if isinstance(message, Publication):
                got[message.channel].append(
                    (message.offset, message.epoch, client.data(message.data))
                )
    return got


async def test_two_brokers_on_a_cluster_survive_a_master_killed_and_its_replica_promoted() -> None:
    async with (
        RedisClusterServers() as cluster,
        serve_ready(on_cluster(cluster)) as a,
        serve_ready(on_cluster(cluster)) as b,
        clients(b.url(), Encoding.MSGPACK) as (sub,),
        connect(a.url(), backoff=Backoff(base=0.1, cap=0.5), publish_retry_for=40) as pub,
    ):
        for i, channel in enumerate(CHANNELS):
            await subscribe(sub, channel, request_id=i + 1)
        epochs = {}
        for channel in CHANNELS:
            for n in range(1, 4):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert reply.offset == n
                epochs[channel] = reply.epoch
        got = await collect(sub, dict.fromkeys(CHANNELS, 3))

        # Every key of a channel is on the node that owns the channel's slot.
        slots = {c: await _keyslot(cluster, f"broker:m:{{{c}}}") for c in CHANNELS}
        probe = aioredis.RedisCluster.from_url(cluster.url)
        try:
            for channel, slot in slots.items():
                for kind in "ms":
                    assert await _keyslot(cluster, f"broker:{kind}:{{{channel}}}") == slot
                    assert await probe.exists(f"broker:{kind}:{{{channel}}}") == 1
        finally:
            await probe.aclose()
        assert len({await cluster.owner(slot) for slot in slots.values()}) > 1  # spread

        # The hardest node to lose: the one carrying the subscribers' broker's health channel
        # (its pub/sub link fails whole, not one channel at a time).
        backplane: Any = b.broker.backplane
        health_slot = await _keyslot(cluster, f"broker:health:{backplane.process}")
        victim = await cluster.owner(health_slot)
        await cluster.wait_replicated(victim)
        await victim.stop()  # SIGKILL: the cluster promotes its replica
        for channel in CHANNELS:
            for n in range(4, 7):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert (reply.offset, reply.epoch) == (n, epochs[channel])
        assert await cluster.owner(health_slot) is not victim

        more = await collect(sub, dict.fromkeys(CHANNELS, 3))
        for channel in CHANNELS:
            assert got[channel] + more[channel] == [
                (n, epochs[channel], f"{channel}/{n}") for n in range(1, 7)
            ]


async def _keyslot(cluster: RedisClusterServers, key: str) -> int:
    """``CLUSTER KEYSLOT key``, as Redis computes it."""
    client = aioredis.Redis(port=cluster.nodes[0].port)
    try:
        return int(await client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
