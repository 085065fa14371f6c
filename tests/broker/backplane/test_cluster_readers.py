"""Redis Cluster: every master's pub/sub connection is read at once (``redis_shard_readers``), on
a real local cluster of three masters with a replica each. A publication on one master does not
wait while the process reads another (the one holding its health channel, say), and a master that
dies without holding the health channel stops nothing on the others: its channels come back on
the promoted replica, every publication delivered once, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from redis.crc import key_slot

from broker.backplane.redis import RedisShard
from broker.client import Backoff, connect
from broker.settings import Settings
from protocol import Encoding, Publication
from tests.broker.backplane.test_behaviour import clients, publish, serve_ready, subscribe
from tests.broker.backplane.test_cluster import collect, on_cluster
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

#: Long enough that a reader waiting out a share of it (redis-py's round robin over the masters)
#: misses the bound below by seconds.
HEALTH_INTERVAL = 10.0
ROUND_TRIPS = 20


def with_health_interval(settings: Settings, seconds: float) -> Settings:
    backplane = msgspec.structs.replace(settings.backplane, health_interval=seconds)
    return msgspec.structs.replace(settings, backplane=backplane)


def shard_of(running: Any) -> RedisShard:
    shard: RedisShard = running.broker.backplane.shards[0]
    return shard


async def owner_of(cluster: RedisClusterServers, key: str) -> RedisServer:
    """The master of ``key``'s slot now (the slot computed as Redis does: a killed node cannot
    be asked)."""
    return await cluster.owner(key_slot(key.encode()))


async def channel_not_on(
    cluster: RedisClusterServers, shard: RedisShard, *masters: RedisServer
) -> str:
    """A channel of namespace ``h`` whose slot is on none of ``masters``."""
    for i in range(100):
        channel = f"h:elsewhere-{i}"
        if await owner_of(cluster, shard.keys.live(channel)) not in masters:
            return channel
    raise LookupError("every channel tried is on those masters")


async def test_a_publication_on_another_master_than_the_health_channel_is_not_held_back() -> None:
    async with RedisClusterServers() as cluster:
        settings = with_health_interval(on_cluster(cluster), HEALTH_INTERVAL)
        async with (
            serve_ready(settings) as a,
            serve_ready(settings) as b,
            clients(b.url(), Encoding.JSON) as (sub,),
            clients(a.url(), Encoding.JSON) as (pub,),
        ):
            shard = shard_of(b)
            health = await owner_of(cluster, shard.keys.health(shard.process))
            channel = await channel_not_on(cluster, shard, health)
            await subscribe(sub, channel)
            # b reads the health channel's master and the channel's; with one reader going
            # round them, each publication would wait out a share of the health interval.
            try:
                async with asyncio.timeout(HEALTH_INTERVAL / 2):
                    for n in range(1, ROUND_TRIPS + 1):
                        await publish(pub, channel, n, n)
                        got = await sub.expect(Publication)
                        assert (got.channel, got.offset, sub.data(got.data)) == (channel, n, n)
            except TimeoutError:
                pytest.fail(
                    f"{ROUND_TRIPS} publish -> receive round trips took longer than half the"
                    f" health interval ({HEALTH_INTERVAL / 2} s): publications waited for the"
                    " reader to come back from another master"
                )


async def test_a_master_without_the_health_channel_dies_and_its_channels_come_back() -> None:
    async with (
        RedisClusterServers() as cluster,
        serve_ready(on_cluster(cluster)) as a,
        serve_ready(on_cluster(cluster)) as b,
        clients(b.url(), Encoding.MSGPACK) as (sub,),
        connect(a.url(), backoff=Backoff(base=0.1, cap=0.5), publish_retry_for=40) as pub,
    ):
        shard = shard_of(b)
        health = await owner_of(cluster, shard.keys.health(shard.process))
        bus = await owner_of(cluster, shard.keys.bus())
        victim_channel = await channel_not_on(cluster, shard, health, bus)
        victim = await owner_of(cluster, shard.keys.live(victim_channel))
        other_channel = await channel_not_on(cluster, shard, victim)
        channels = [victim_channel, other_channel]
        for i, channel in enumerate(channels):
            await subscribe(sub, channel, request_id=i + 1)
        epochs = {}
        for channel in channels:
            for n in range(1, 4):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert reply.offset == n
                epochs[channel] = reply.epoch
        got = await collect(sub, dict.fromkeys(channels, 3))
        links = shard.links

        await cluster.wait_replicated(victim)
        await victim.stop()  # SIGKILL: the cluster promotes its replica
        for channel in channels:
            for n in range(4, 7):
                reply = await pub.publish(channel, f"{channel}/{n}")
                assert (reply.offset, reply.epoch) == (n, epochs[channel])
        assert await owner_of(cluster, shard.keys.live(victim_channel)) is not victim

        more = await collect(sub, dict.fromkeys(channels, 3))
        for channel in channels:
            assert got[channel] + more[channel] == [
                (n, epochs[channel], f"{channel}/{n}") for n in range(1, 7)
            ]
        # b's link stayed up: only the dead master's subscriptions moved.
        assert shard.links == links
